#!/usr/bin/env python
"""MoE layer throughput vs this machine's matmul peak and vs the dense path.

Measured side by side in one run (the machine is shared; only ratios mean something):
  * peak: FLOP/s of a large float32 ``torch.mm`` (best of several runs),
  * grouped: ``grouped_expert_forward`` (tokens sorted by expert, one mm per expert),
    counted with its ACTIVE FLOPs (top-k experts per token, 2 matmuls each),
  * dense: ``dense_expert_forward`` (every expert on every token, then the gates select),
  * naive: a per-token loop (only at the smallest size, as a sanity point).
For each layer shape and token count it reports tokens/s, the fraction of the peak the
grouped path reaches, and grouped/dense speed. Writes JSON (``--out``) and prints it.

    .venv/bin/python hack/bench/bench_moe_layer.py --out /tmp/bench_moe.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from mmo_serving.model.moe import MoEFeedForward, dense_expert_forward, grouped_expert_forward

SHAPES = {
    # the shipped model's layer
    "shipped(H=128,I=128,E=8,k=2)": dict(d_model=128, d_expert=128, n_experts=8, top_k=2),
    # a serving-size layer: same routing, big enough for the matmuls to fill the cores
    "large(H=1024,I=2048,E=8,k=2)": dict(d_model=1024, d_expert=2048, n_experts=8, top_k=2),
    # more experts per token choice: the dense path does E/k = 8x the work
    "large(H=1024,I=1024,E=16,k=2)": dict(d_model=1024, d_expert=1024, n_experts=16, top_k=2),
}


def best_time(fn: Callable[[], object], repeats: int, min_time: float = 0.2) -> float:
    fn()  # warm-up
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < repeats or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 5 * repeats:
            break
    return min(times)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_time(lambda: torch.mm(a, b), repeats)


def bench_shape(name: str, spec: dict, tokens: list[int], repeats: int) -> list[dict]:
    torch.manual_seed(0)
    layer = MoEFeedForward(**spec).eval()
    h, i, k = spec["d_model"], spec["d_expert"], spec["top_k"]
    rows = []
    for t in tokens:
        x = torch.randn(t, h)
        with torch.inference_mode():
            ids, w = layer.route(x)
            args = (x, ids, w, layer.w_in, layer.w_out, layer.b_in, layer.b_out)
            # the peak is measured right before and after each layer run (same load)
            peak = matmul_peak()
            t_grouped = best_time(lambda a=args: grouped_expert_forward(*a), repeats)
            peak = max(peak, matmul_peak())
            t_dense = best_time(lambda a=args: dense_expert_forward(*a), max(1, repeats // 2))
        active_flops = t * k * 2 * (2 * h * i)
        rows.append(
            {
                "layer": name,
                "tokens": t,
                "mm_peak_gflops": round(peak / 1e9, 1),
                "grouped_tokens_per_s": round(t / t_grouped, 1),
                "dense_tokens_per_s": round(t / t_dense, 1),
                "grouped_fraction_of_mm_peak": round(active_flops / t_grouped / peak, 4),
                "grouped_vs_dense_speedup": round(t_dense / t_grouped, 3),
                "flop_bound_speedup": spec["n_experts"] / k,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def naive_point(peak: float) -> dict:
    torch.manual_seed(0)
    layer = MoEFeedForward(128, 128, 8, 2).eval()
    x = torch.randn(256, 128)
    with torch.inference_mode():
        ids, w = layer.route(x)

        def naive() -> torch.Tensor:
            out = torch.zeros_like(x)
            for t in range(x.shape[0]):
                for j in range(2):
                    e = int(ids[t, j])
                    hh = torch.nn.functional.gelu(x[t] @ layer.w_in[e] + layer.b_in[e])
                    out[t] += w[t, j] * (hh @ layer.w_out[e] + layer.b_out[e])
            return out

        t_naive = best_time(naive, 2)
        t_grouped = best_time(
            lambda: grouped_expert_forward(
                x, ids, w, layer.w_in, layer.w_out, layer.b_in, layer.b_out
            ),
            5,
        )
    return {
        "layer": "shipped",
        "tokens": 256,
        "grouped_vs_per_token_loop_speedup": round(t_naive / t_grouped, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="hack/bench/results/moe_layer.json")
    p.add_argument("--tokens", default="256,1024,4096")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tokens = [int(v) for v in a.tokens.split(",")]
    peak_before = matmul_peak()
    rows = []
    for name, spec in SHAPES.items():
        rows += bench_shape(name, spec, tokens, a.repeats)
    peak_after = matmul_peak()
    result = {
        "benchmark": "moe_layer",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": a.threads},
        "torch": torch.__version__,
        "mm_peak_gflops": {
            "before": round(peak_before / 1e9, 1),
            "after": round(peak_after / 1e9, 1),
        },
        "note": "each row's fraction uses the best of two mm-peak runs taken right before "
        "and after its grouped run; before/after here show the drift of a shared machine",
        "rows": rows,
        "per_token_loop": naive_point(peak_before),
        "summary": {
            name: {
                "fraction_of_peak_at_>=1024_tokens": [
                    r["grouped_fraction_of_mm_peak"]
                    for r in rows
                    if r["layer"] == name and r["tokens"] >= 1024
                ],
                "speedup_vs_dense_at_>=1024_tokens": [
                    r["grouped_vs_dense_speedup"]
                    for r in rows
                    if r["layer"] == name and r["tokens"] >= 1024
                ],
            }
            for name in SHAPES
        },
        "median_fraction_of_peak": statistics.median(
            r["grouped_fraction_of_mm_peak"] for r in rows
        ),
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
