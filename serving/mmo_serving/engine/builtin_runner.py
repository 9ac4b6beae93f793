"""The built-in model (``mmo_serving.model``) as a ``ModelRunner``.

``ModelSource`` is the picklable factory each rank calls: it loads the checkpoint named
by ``AppArgs.model_source`` on the CPU (every rank reads the same files, so the dense
weights are equal everywhere), casts it to ``AppArgs.dtype`` (weights, activations and
KV cache; the router's softmax and top-k run in float32 whatever the dtype), applies
INT8 when ``AppArgs.quantization == "int8"``, and wraps the model. ``tiny`` builds a
random model instead (tests and benchmarks of the engine alone, no checkpoint needed).

A question outside the model's task gets a fixed sentence (``mmo_serving.model.scope``)
without running the model. The other requests of a shard run as one batch through the
model's reference greedy loop (prefill, then one KV-cached decode step per token) with
the shard's largest ``max_new_tokens``; each answer is then cut to its own limit (greedy rows are
independent, so this equals running each request alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmo_serving.config import AppArgs
from mmo_serving.engine.types import EmbeddingRequest, GenerationRequest, GenerationResult

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ShapesRunner:
    model: nn.Module
    tokenizer: Any

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        from mmo_serving.model.inference import answer_ids, prompt_token_counts
        from mmo_serving.model.scope import REFUSAL

        if not items:
            return []
        longest = max(i.max_new_tokens for i in items)
        ids = answer_ids(
            self.model,  # type: ignore[arg-type]
            self.tokenizer,
            [i.image for i in items],
            [i.text for i in items],
            max_new_tokens=longest,
        )
        prompts = prompt_token_counts(
            self.model,  # type: ignore[arg-type]
            self.tokenizer,
            [i.image for i in items],
            [i.text for i in items],
        )
        out = []
        for item, row, prompt in zip(items, ids, prompts, strict=True):
            if row is None:  # outside the task: the fixed sentence, no token generated
                out.append(GenerationResult(REFUSAL, 0, prompt))
                continue
            row = row[: item.max_new_tokens]
            out.append(GenerationResult(self.tokenizer.decode(row), len(row), prompt))
        return out

    def embed(self, items: list[EmbeddingRequest]) -> list[list[float]]:
        from mmo_serving.model.inference import embed_image, embed_text

        out: list[list[float]] = [[] for _ in items]
        texts = [(n, i.text) for n, i in enumerate(items) if i.text is not None]
        images = [(n, i.image) for n, i in enumerate(items) if i.image is not None]
        if texts:
            vecs = embed_text(self.model, self.tokenizer, [t for _, t in texts])  # type: ignore[arg-type]
            for (n, _), v in zip(texts, vecs.tolist(), strict=True):
                out[n] = v
        if images:
            vecs = embed_image(self.model, [im for _, im in images])  # type: ignore[arg-type]
            for (n, _), v in zip(images, vecs.tolist(), strict=True):
                out[n] = v
        return out


@dataclass(frozen=True)
class ModelSource:
    """Picklable runner factory (see module docstring)."""

    source: str
    quantization: str = "none"
    tiny: dict[str, Any] | None = field(default=None, hash=False)
    seed: int = 0
    dtype: str = "float32"

    @classmethod
    def from_args(cls, args: AppArgs) -> ModelSource:
        return cls(source=args.model_source, quantization=args.quantization, dtype=args.dtype)

    def __call__(self) -> ShapesRunner:
        from mmo_serving.model import build_model, default_tokenizer, load_model, quantize_int8
        from mmo_serving.model.config import ModelConfig

        if self.tiny is not None:
            tokenizer = default_tokenizer()
            config = ModelConfig(vocab_size=len(tokenizer), **self.tiny)
            model = build_model(config, seed=self.seed)
        else:
            model, tokenizer, _ = load_model(self.source, "cpu")
        model.eval()
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: valid dtypes are {', '.join(DTYPES)}")
        model.to(DTYPES[self.dtype])
        if self.quantization == "int8":
            quantize_int8(model)
        elif self.quantization != "none":
            raise ValueError(
                f"quantization={self.quantization!r}: this model supports 'none' and 'int8'"
            )
        return ShapesRunner(model, tokenizer)
