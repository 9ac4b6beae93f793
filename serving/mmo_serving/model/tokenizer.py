"""Word-level tokenizer, saved with the checkpoint as ``tokenizer.json`` (no torch import).

Text is lower-cased and split into ``[a-z]+`` / ``[0-9]+`` words; punctuation is dropped
and unknown words map to ``<unk>``; "an" is read as "a" (the task's questions use "a"
before every word, people write "an orange circle"). Special tokens: ``<pad>`` (0),
``<unk>``, ``<bos>`` (starts a question), ``<sep>`` (ends a question, the answer
follows), ``<eos>``, and ``<emb>`` (starts a text to embed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SPECIALS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<sep>", "<eos>", "<emb>")
FORMAT = "mmo-word-tokenizer"
_WORD = re.compile(r"[a-z]+|[0-9]+")
_SAME_AS = {"an": "a"}


class TokenizerError(ValueError):
    """A tokenizer file is unreadable or not of the expected format."""


class WordTokenizer:
    def __init__(self, words: list[str]):
        vocab = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        if len(set(vocab)) != len(vocab):
            raise TokenizerError("tokenizer vocabulary has duplicate words")
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.unk_id, self.bos_id, self.sep_id, self.eos_id, self.emb_id = (
            self.index[s] for s in SPECIALS
        )

    def __len__(self) -> int:
        return len(self.vocab)

    @staticmethod
    def words(text: str) -> list[str]:
        return [_SAME_AS.get(w, w) for w in _WORD.findall(text.lower())]

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in self.words(text)]

    def decode(self, ids: list[int]) -> str:
        specials = set(range(len(SPECIALS)))
        return " ".join(self.vocab[i] for i in ids if i not in specials and 0 <= i < len(self))

    def question_ids(self, question: str, max_len: int) -> list[int]:
        """``<bos> words <sep>``, words truncated so that the whole fits ``max_len``
        (keeping the end of the question, where the asked-about words usually are)."""
        body = self.encode(question)[-(max_len - 2) :] if max_len > 2 else []
        return [self.bos_id, *body, self.sep_id]

    def embed_ids(self, text: str, max_len: int) -> list[int]:
        body = self.encode(text)[: max_len - 2] if max_len > 2 else []
        return [self.emb_id, *body, self.eos_id]

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, "specials": list(SPECIALS), "vocab": self.vocab}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, data: object, where: str = "tokenizer.json") -> WordTokenizer:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TokenizerError(f"{where}: not an mmo word tokenizer (expected format {FORMAT!r})")
        vocab = data.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
            raise TokenizerError(f"{where}: 'vocab' must be a list of strings")
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise TokenizerError(f"{where}: vocab must start with the special tokens {SPECIALS}")
        return cls(vocab[len(SPECIALS) :])

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{p}: invalid JSON ({e.msg} at line {e.lineno})") from e
        return cls.from_json(data, str(p))


def default_tokenizer() -> WordTokenizer:
    from mmo_serving.model.tasks import vocabulary

    extra = ["circles", "squares", "triangles", "any", "picture", "photo", "do", "you", "see"]
    extra += [str(i) for i in range(10)]
    return WordTokenizer(sorted(set(vocabulary()) | set(extra)))
