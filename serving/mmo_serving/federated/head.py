"""The part of shapes-moe that federated sites fine-tune: the answer head (torch).

The answer head is the rows of ``lm_head`` that score the task's one-word answers
(:data:`mmo_serving.federated.data.ANSWERS`): ``weight [A, D]`` and ``bias [A]``, 15 x 128
+ 15 numbers for the built-in model. Everything below it is frozen, so a site computes the
hidden state that feeds ``lm_head`` at the answer position once (its *features*) and each
round trains a linear classifier on them: rounds take well under a second on a CPU.
:func:`apply_head` writes a tuned head back into a model's ``lm_head``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmo_serving.federated.data import ANSWERS, Item, images_of
from mmo_serving.model.tokenizer import WordTokenizer
from mmo_serving.model.transformer import ShapesMoE

WEIGHT, BIAS = "answer_head.weight", "answer_head.bias"
HEAD_INITS = ("checkpoint", "zeros")


def load_base(source: str) -> tuple[ShapesMoE, WordTokenizer]:
    """The frozen model: a checkpoint source, or ``random://SEED`` (a seeded untrained
    model of the default size, for tests on machines without the built-in checkpoint)."""
    if source.startswith("random://"):
        from mmo_serving.model.config import ModelConfig
        from mmo_serving.model.tokenizer import default_tokenizer
        from mmo_serving.model.transformer import build_model

        tok = default_tokenizer()
        seed = int(source[len("random://") :] or 0)
        return build_model(ModelConfig(vocab_size=len(tok)), seed=seed).eval(), tok
    from mmo_serving.model.checkpoint import load_model

    model, tok, _ = load_model(source)
    return model, tok


def answer_ids(tok: WordTokenizer) -> list[int]:
    ids = []
    for word in ANSWERS:
        enc = tok.encode(word)
        if len(enc) != 1 or enc[0] == tok.unk_id:
            raise ValueError(f"answer {word!r} is not one known token of the tokenizer: {enc}")
        ids.append(enc[0])
    return ids


def initial_head(model: ShapesMoE, tok: WordTokenizer, init: str) -> dict[str, np.ndarray]:
    """``checkpoint``: the model's own answer rows; ``zeros``: a head learnt from scratch."""
    if init not in HEAD_INITS:
        raise ValueError(f"head-init must be one of {', '.join(HEAD_INITS)}, got {init!r}")
    ids = answer_ids(tok)
    w = model.lm_head.weight.detach()[ids].numpy().astype(np.float32)
    b = model.lm_head.bias.detach()[ids].numpy().astype(np.float32)
    if init == "zeros":
        w, b = np.zeros_like(w), np.zeros_like(b)
    return {WEIGHT: w, BIAS: b}


def apply_head(model: ShapesMoE, tok: WordTokenizer, head: dict[str, np.ndarray]) -> None:
    """Write a tuned head into the model's ``lm_head`` (in place)."""
    ids = torch.tensor(answer_ids(tok))
    with torch.no_grad():
        model.lm_head.weight[ids] = torch.as_tensor(head[WEIGHT], dtype=torch.float32)
        model.lm_head.bias[ids] = torch.as_tensor(head[BIAS], dtype=torch.float32)


@torch.inference_mode()
def features(
    model: ShapesMoE, tok: WordTokenizer, items: Sequence[Item], *, seed: int = 0, batch: int = 64
) -> np.ndarray:
    """The hidden state ``lm_head`` reads when the model starts its answer, per item."""
    from mmo_serving.model.inference import _images_tensor, encode_questions

    seen: list[torch.Tensor] = []
    hook = model.lm_head.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
    try:
        images = images_of(list(items), seed)
        for lo in range(0, len(items), batch):
            chunk = items[lo : lo + batch]
            x, has = _images_tensor(model, images[lo : lo + batch])
            ids, valid = encode_questions(
                tok, [it.question for it in chunk], model.config.max_text_len
            )
            model.prefill(x, has, ids, valid)
    finally:
        hook.remove()
    return torch.cat(seen).numpy().astype(np.float32)


def cached_features(
    model: ShapesMoE,
    tok: WordTokenizer,
    items: Sequence[Item],
    cache_dir: str | Path | None,
    key: str,
    *,
    seed: int = 0,
) -> np.ndarray:
    """:func:`features`, kept in ``cache_dir`` (on the site: derived from local data)."""
    if cache_dir is None:
        return features(model, tok, items, seed=seed)
    digest = hashlib.sha256(
        (key + "|" + "|".join(f"{i.split}:{i.index}:{i.question}" for i in items)).encode()
    ).hexdigest()[:20]
    path = Path(cache_dir) / f"features-{digest}.npy"
    if path.is_file():
        return np.load(path)
    feats = features(model, tok, items, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)
    return feats


def logits(head: dict[str, np.ndarray], feats: np.ndarray) -> np.ndarray:
    return feats @ head[WEIGHT].T + head[BIAS]


def accuracy(head: dict[str, np.ndarray], feats: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits(head, feats), axis=1) == labels))


def train_head(
    head: dict[str, np.ndarray],
    feats: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch: int = 64,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A few epochs of Adam on cross-entropy over the answers; returns the new head."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.tensor(head[WEIGHT], requires_grad=True)
    b = torch.tensor(head[BIAS], requires_grad=True)
    x = torch.from_numpy(feats)
    y = torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for lo in range(0, len(y), batch):
            idx = order[lo : lo + batch]
            loss = F.cross_entropy(x[idx] @ w.T + b, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {WEIGHT: w.detach().numpy().copy(), BIAS: b.detach().numpy().copy()}
