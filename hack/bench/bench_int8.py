#!/usr/bin/env python
"""INT8 vs float32 on the shipped shapes-moe checkpoint, side by side in one run.

Reports: bytes of the quantized layers (attention linears + expert stacks) vs their
float32 size; answer accuracy and recall@1 on held-out samples for both; speed of the
decoder stack (all blocks: attention + MoE) at 1, 16 and 256 tokens, and of whole
answer batches of 1, 16 and 256 questions. Writes JSON (``--out``) and prints it.

    .venv/bin/python hack/bench/bench_int8.py --out /tmp/bench_int8.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable

import torch

from mmo_serving.model.checkpoint import load_model
from mmo_serving.model.evaluate import heldout, qa_accuracy, retrieval_recall
from mmo_serving.model.inference import answer_batch
from mmo_serving.model.quant import quantize_int8, quantized_bytes


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def stack_time(model, tokens: int, repeats: int) -> float:
    """All decoder blocks on ``tokens`` text tokens (one row, causal)."""
    d = model.config.d_model
    x = torch.randn(1, tokens, d)
    valid = torch.ones(1, tokens, dtype=torch.bool)
    is_img = torch.zeros_like(valid)
    seg = torch.ones(1, tokens, dtype=torch.long)
    mask = model.attention_mask(is_img, seg, is_img, valid)
    with torch.inference_mode():
        return best_time(lambda: model.run(x, mask, valid, is_img), repeats)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", default="builtin://shapes-moe")
    p.add_argument("--images", type=int, default=250, help="held-out images (4 questions each)")
    p.add_argument("--out", default="hack/bench/results/int8.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, tok, _ = load_model(a.checkpoint)
    qmodel = quantize_int8(copy.deepcopy(model))
    q_bytes, f_bytes = quantized_bytes(qmodel)
    samples = heldout(a.images)
    acc_f = qa_accuracy(model, tok, samples)
    acc_q = qa_accuracy(qmodel, tok, samples)
    rec_f = retrieval_recall(model, tok, samples)
    rec_q = retrieval_recall(qmodel, tok, samples)
    speed = {}
    for t in (1, 16, 256):
        tf, tq = stack_time(model, t, a.repeats), stack_time(qmodel, t, a.repeats)
        speed[f"stack_{t}_tokens"] = {
            "float32_ms": round(tf * 1e3, 3),
            "int8_ms": round(tq * 1e3, 3),
            "int8_speedup": round(tf / tq, 3),
        }
    items = [(s.image, qa.question) for s in samples for qa in s.qas]
    for n in (1, 16, 256):
        ims, qs = [i for i, _ in items[:n]], [q for _, q in items[:n]]
        tf = best_time(
            lambda ims=ims, qs=qs: answer_batch(model, tok, ims, qs), max(1, a.repeats // 2)
        )
        tq = best_time(
            lambda ims=ims, qs=qs: answer_batch(qmodel, tok, ims, qs), max(1, a.repeats // 2)
        )
        speed[f"answer_batch_{n}"] = {
            "float32_ms": round(tf * 1e3, 2),
            "int8_ms": round(tq * 1e3, 2),
            "int8_speedup": round(tf / tq, 3),
        }
    result = {
        "benchmark": "int8",
        "checkpoint": a.checkpoint,
        "method": (
            "own per-channel int8 weights + dynamic per-token int8 activations "
            "via torch._int_mm; routers float32"
        ),
        "threads": a.threads,
        "size": {
            "float32_bytes": f_bytes,
            "int8_bytes": q_bytes,
            "ratio": round(q_bytes / f_bytes, 4),
        },
        "accuracy": {
            "float32": acc_f["accuracy"],
            "int8": acc_q["accuracy"],
            "drop_points": round(100 * (acc_f["accuracy"] - acc_q["accuracy"]), 2),
            "per_kind_float32": acc_f["per_kind"],
            "per_kind_int8": acc_q["per_kind"],
            "questions": acc_f["questions"],
        },
        "recall_at_1": {"float32": rec_f["recall_at_1"], "int8": rec_q["recall_at_1"]},
        "speed": speed,
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
