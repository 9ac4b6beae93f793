"""Held-out evaluation: answer accuracy per question kind, image->caption recall@1,
routing statistics (tokens per layer and expert, split by modality) and INT8 comparison."""

from __future__ import annotations

import copy
import time
from collections import Counter
from typing import Any

import torch

from mmo_serving.model import tasks
from mmo_serving.model.inference import answer_batch, embed_image, embed_text
from mmo_serving.model.moe import MoEFeedForward
from mmo_serving.model.quant import float_layer_bytes, quantize_int8, quantized_bytes
from mmo_serving.model.tokenizer import WordTokenizer
from mmo_serving.model.transformer import ShapesMoE

EVAL_SEED = 0


def heldout(n_images: int, seed: int = EVAL_SEED, split: str = "test") -> list[tasks.Sample]:
    return list(tasks.iter_samples(n_images, seed, split))


def qa_accuracy(
    model: ShapesMoE, tok: WordTokenizer, samples: list[tasks.Sample], batch: int = 256
) -> dict[str, Any]:
    """Exact match of every question of every sample; overall and per kind."""
    items = [(s.image, qa) for s in samples for qa in s.qas]
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        got = answer_batch(model, tok, [im for im, _ in chunk], [qa.question for _, qa in chunk])
        for (_, qa), g in zip(chunk, got, strict=True):
            total[qa.kind] += 1
            right[qa.kind] += int(g == qa.answer)
    n = sum(total.values())
    return {
        "accuracy": round(sum(right.values()) / max(1, n), 4),
        "questions": n,
        "per_kind": {k: round(right[k] / total[k], 4) for k in tasks.QUESTION_KINDS if total[k]},
        "per_kind_questions": {k: total[k] for k in tasks.QUESTION_KINDS if total[k]},
    }


def retrieval_recall(
    model: ShapesMoE, tok: WordTokenizer, samples: list[tasks.Sample], gallery: int = 100
) -> dict[str, Any]:
    """Image -> caption recall@1: the samples are cut into galleries of ``gallery``
    images; each image ranks the distinct captions of its gallery, and is right when the
    best one is its own caption text (equal texts describe equal content)."""
    hits = n = 0
    for g in range(0, len(samples), gallery):
        chunk = samples[g : g + gallery]
        caps = sorted({s.caption for s in chunk})
        ie = torch.cat(
            [
                embed_image(model, [s.image for s in chunk[i : i + 256]])
                for i in range(0, len(chunk), 256)
            ]
        )
        te = embed_text(model, tok, caps)
        best = (ie @ te.t()).argmax(1).tolist()
        hits += sum(caps[b] == s.caption for b, s in zip(best, chunk, strict=True))
        n += len(chunk)
    return {"recall_at_1": round(hits / max(1, n), 4), "images": n, "gallery": min(gallery, n)}


class RoutingRecorder:
    """Counts the tokens routed to each (layer, expert), split into image and text tokens."""

    def __init__(self, model: ShapesMoE):
        self.layers = model.moe_layers()
        e = self.layers[0].n_experts if self.layers else 0
        self.image = torch.zeros(len(self.layers), e, dtype=torch.long)
        self.text = torch.zeros(len(self.layers), e, dtype=torch.long)

    def hook(
        self, layer: MoEFeedForward, topk_ids: torch.Tensor, is_image: torch.Tensor | None
    ) -> None:
        i = layer.moe_layer_index
        e = self.image.shape[1]
        if is_image is None:
            is_image = torch.zeros(topk_ids.shape[0], dtype=torch.bool, device=topk_ids.device)
        img = is_image[:, None].expand_as(topk_ids).reshape(-1).cpu()
        ids = topk_ids.reshape(-1).cpu()
        self.image[i] += torch.bincount(ids[img], minlength=e)
        self.text[i] += torch.bincount(ids[~img], minlength=e)

    def __enter__(self) -> RoutingRecorder:
        for m in self.layers:
            m.route_hook = self.hook
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self.layers:
            m.route_hook = None

    def to_json(self) -> dict[str, Any]:
        """``layers`` is the loads file ``mmo plan --loads`` reads."""
        return {
            "layers": (self.image + self.text).tolist(),
            "by_modality": {"image": self.image.tolist(), "text": self.text.tolist()},
            "note": "tokens routed per MoE layer (rows) and expert (columns); "
            "a token counts once per chosen expert (top-k)",
        }


def _timed_answers(model: ShapesMoE, tok: WordTokenizer, samples: list[tasks.Sample]) -> float:
    items = [(s.image, qa.question) for s in samples for qa in s.qas][:256]
    t0 = time.perf_counter()
    answer_batch(model, tok, [i for i, _ in items], [q for _, q in items])
    return time.perf_counter() - t0


def evaluate(
    model: ShapesMoE,
    tok: WordTokenizer,
    n_images: int = 500,
    seed: int = EVAL_SEED,
    quantize: str | None = None,
    routing: bool = False,
) -> dict[str, Any]:
    samples = heldout(n_images, seed)
    report: dict[str, Any] = {"heldout_images": n_images, "split": "test", "seed": seed}
    recorder = RoutingRecorder(model) if routing else None
    if recorder is not None:
        with recorder:
            report["qa"] = qa_accuracy(model, tok, samples)
        report["routing"] = recorder.to_json()
    else:
        report["qa"] = qa_accuracy(model, tok, samples)
    report["retrieval"] = retrieval_recall(model, tok, samples)
    if quantize == "int8":
        qmodel = quantize_int8(copy.deepcopy(model))
        q_bytes, fp_bytes = quantized_bytes(qmodel)
        q_qa = qa_accuracy(qmodel, tok, samples)
        q_ret = retrieval_recall(qmodel, tok, samples)
        t_fp = _timed_answers(model, tok, samples)
        t_q = _timed_answers(qmodel, tok, samples)
        report["int8"] = {
            "method": "int8 per-channel weights, per-token dynamic int8 activations, _int_mm",
            "float32_layer_bytes": float_layer_bytes(model),
            "int8_layer_bytes": q_bytes,
            "size_ratio": round(q_bytes / fp_bytes, 4),
            "accuracy": q_qa["accuracy"],
            "accuracy_float32": report["qa"]["accuracy"],
            "accuracy_drop_points": round(100 * (report["qa"]["accuracy"] - q_qa["accuracy"]), 2),
            "per_kind": q_qa["per_kind"],
            "recall_at_1": q_ret["recall_at_1"],
            "answer_seconds_256": {"float32": round(t_fp, 3), "int8": round(t_q, 3)},
            "speedup": round(t_fp / t_q, 3),
        }
    elif quantize not in (None, "none"):
        raise ValueError(f"unknown quantization {quantize!r}; valid: int8")
    return report
