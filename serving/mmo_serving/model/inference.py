"""High-level inference: answers to questions about images, and embeddings.

Questions outside the task (:mod:`.scope`) are answered with a fixed sentence and never
reach the model (:func:`answer_ids`); :func:`generate_ids` is the raw greedy loop.
"""

from __future__ import annotations

from typing import Any

import torch

from mmo_serving.model.preprocess import preprocess
from mmo_serving.model.scope import REFUSAL, refusal_reason
from mmo_serving.model.tokenizer import WordTokenizer
from mmo_serving.model.transformer import ShapesMoE


def encode_questions(
    tokenizer: WordTokenizer, questions: list[str], max_len: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """LEFT-padded ``<bos> words <sep>`` ids [B, T] and the valid mask."""
    seqs = [tokenizer.question_ids(q, max_len) for q in questions]
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), tokenizer.pad_id, dtype=torch.long)
    valid = torch.zeros(len(seqs), t, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, t - len(s) :] = torch.tensor(s)
        valid[i, t - len(s) :] = True
    return ids.to(device), valid.to(device)


def _images_tensor(model: ShapesMoE, images: list[Any]) -> tuple[torch.Tensor | None, torch.Tensor]:
    size = model.config.image_size
    has = torch.tensor([im is not None for im in images], dtype=torch.bool)
    if not bool(has.any()):
        return None, has
    blank = torch.zeros(3, size, size)
    x = torch.stack([preprocess(im, size) if im is not None else blank for im in images])
    return x.to(model.device, model.dtype), has.to(model.device)


def prompt_token_counts(
    model: ShapesMoE, tokenizer: WordTokenizer, images: list[Any], questions: list[str]
) -> list[int]:
    """Tokens each prompt takes: its text tokens (with ``<bos>``/``<sep>``, cut to the
    model's text length as generation does) plus the image tokens when it has an image."""
    max_len, per_image = model.config.max_text_len, model.config.n_image_tokens
    return [
        len(tokenizer.question_ids(q, max_len)) + (per_image if image is not None else 0)
        for image, q in zip(images, questions, strict=True)
    ]


@torch.inference_mode()
def generate_ids(
    model: ShapesMoE,
    tokenizer: WordTokenizer,
    images: list[Any],
    questions: list[str],
    max_new_tokens: int = 4,
    use_cache: bool = True,
) -> list[list[int]]:
    """Greedy decoding; each row stops at ``<eos>`` (not included) or ``max_new_tokens``.
    ``use_cache=False`` recomputes the whole prompt every step (the reference)."""
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images but {len(questions)} questions")
    if not questions:
        return []
    x, has = _images_tensor(model, images)
    ids, valid = encode_questions(tokenizer, questions, model.config.max_text_len, model.device)
    out: list[list[int]] = [[] for _ in questions]
    done = [max_new_tokens <= 0] * len(questions)
    logits, cache = model.prefill(x, has, ids, valid)
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)
        for i, tok in enumerate(nxt.tolist()):
            if not done[i]:
                if tok == tokenizer.eos_id:
                    done[i] = True
                else:
                    out[i].append(tok)
        if all(done):
            break
        if use_cache:
            logits, cache = model.decode_step(nxt, cache)
        else:
            ids = torch.cat([ids, nxt[:, None]], 1)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)
            logits, _ = model.prefill(x, has, ids, valid)
    return out


def answer_ids(
    model: ShapesMoE,
    tokenizer: WordTokenizer,
    images: list[Any],
    questions: list[str],
    max_new_tokens: int = 4,
) -> list[list[int] | None]:
    """Generated ids per question; None for a question outside the task (refused: only
    the questions the model can answer run through it)."""
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images but {len(questions)} questions")
    keep = [
        i
        for i, (image, q) in enumerate(zip(images, questions, strict=True))
        if refusal_reason(tokenizer, q, image is not None) is None
    ]
    ids = generate_ids(
        model,
        tokenizer,
        [images[i] for i in keep],
        [questions[i] for i in keep],
        max_new_tokens,
    )
    out: list[list[int] | None] = [None] * len(questions)
    for i, row in zip(keep, ids, strict=True):
        out[i] = row
    return out


def answer_batch(
    model: ShapesMoE,
    tokenizer: WordTokenizer,
    images: list[Any],
    questions: list[str],
    max_new_tokens: int = 4,
) -> list[str]:
    """Answers for (image, question) pairs; an image may be None (text-only prompt).
    A question outside the task gets :data:`~mmo_serving.model.scope.REFUSAL`."""
    rows = answer_ids(model, tokenizer, images, questions, max_new_tokens)
    return [REFUSAL if row is None else tokenizer.decode(row) for row in rows]


def answer(model: ShapesMoE, tokenizer: WordTokenizer, image: Any, question: str) -> str:
    return answer_batch(model, tokenizer, [image], [question])[0]


@torch.inference_mode()
def embed_image(model: ShapesMoE, images: list[Any]) -> torch.Tensor:
    """Unit vectors [B, embed_dim] for a list of images."""
    x, _ = _images_tensor(model, images)
    if x is None:
        raise ValueError("embed_image needs at least one image (got None)")
    return model.embed_images(x)


@torch.inference_mode()
def embed_text(model: ShapesMoE, tokenizer: WordTokenizer, texts: list[str]) -> torch.Tensor:
    """Unit vectors [B, embed_dim] for a list of texts (e.g. captions)."""
    seqs = [tokenizer.embed_ids(t, model.config.max_text_len) for t in texts]
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), tokenizer.pad_id, dtype=torch.long)
    valid = torch.zeros(len(seqs), t, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        valid[i, : len(s)] = True
    return model.embed_texts(ids.to(model.device), valid.to(model.device))
