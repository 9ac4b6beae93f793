#!/usr/bin/env python
"""Expert-parallel engine: 8 ranks against 1, on the same requests, side by side.

Three engines run the same batches of chat requests (coloured-shape pictures and
questions from the model's task generator), in alternating rounds so that the noise of
a shared machine hits all of them alike:

* ``local``: ``LocalEngine``, the model in the driver process (no Ray actor);
* ``ranks1``: ``ExpertParallelEngine`` with one rank actor (no process group);
* ``ranksN``: ``ExpertParallelEngine`` with N rank actors (default 8; gloo on CPU,
  nccl on GPUs), contiguous expert placement.

Every rank uses ``--threads`` torch threads. On a CPU-only machine the N ranks share the
same cores, so ``ranksN`` measures the cost of the all_to_all dispatch more than any
speed-up: with 8 real GPUs each rank would own one. The model is the shipped checkpoint
when it loads, else a random model of the default architecture (routing not trained).

    .venv/bin/python hack/bench/bench_engine_ranks.py --out /tmp/bench_engine_ranks.json

Writes JSON (``--out``) and prints a summary; read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np


def model_source() -> tuple[Any, str]:
    from mmo_serving.engine.builtin_runner import ModelSource

    try:
        from mmo_serving.model import load_model

        load_model("builtin://shapes-moe")
        return ModelSource("builtin://shapes-moe"), "builtin://shapes-moe (trained checkpoint)"
    except Exception as exc:  # no checkpoint shipped yet: same architecture, random weights
        return ModelSource("tiny://", tiny={}, seed=0), f"random default architecture ({exc})"


def make_requests(n: int, max_new_tokens: int) -> list[Any]:
    from mmo_serving.engine import GenerationRequest
    from mmo_serving.model.tasks import make_sample

    out = []
    for i in range(n):
        sample = make_sample(i, seed=11, split="test")
        qa = sample.qas[i % len(sample.qas)]
        out.append(GenerationRequest(qa.question, np.asarray(sample.image), max_new_tokens))
    return out


async def timed(engine: Any, requests: list[Any]) -> tuple[float, int]:
    start = time.perf_counter()
    results = await engine.generate(requests)
    return time.perf_counter() - start, sum(r.tokens for r in results)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    import torch

    from mmo_serving.config import AppArgs
    from mmo_serving.engine import ExpertParallelEngine, LocalEngine

    factory, model_desc = model_source()
    requests = make_requests(args.requests, args.max_new_tokens)
    ray.init(
        num_cpus=max(4, os.cpu_count() or 1),
        num_gpus=args.ranks + 1,
        include_dashboard=False,
        log_to_driver=False,
    )
    engines: dict[str, Any] = {}
    try:
        base = {"name": "bench", "model_source": factory.source}
        torch.set_num_threads(args.threads)
        engines["local"] = LocalEngine(AppArgs(**base, num_gpus=1), factory, threads=args.threads)
        engines["ranks1"] = ExpertParallelEngine(
            AppArgs(**base, num_gpus=1), factory, threads=args.threads
        )
        engines[f"ranks{args.ranks}"] = ExpertParallelEngine(
            AppArgs(**base, num_gpus=args.ranks), factory, threads=args.threads
        )
        for name, eng in engines.items():
            if hasattr(eng, "ready"):
                await eng.ready()
            await timed(eng, requests)  # warm-up; also checks that every engine answers
            print(f"{name}: ready", file=sys.stderr)
        reference = await engines["local"].generate(requests)
        agree = {n: (await e.generate(requests)) == reference for n, e in engines.items()}
        times: dict[str, list[float]] = {n: [] for n in engines}
        tokens: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, eng in engines.items():
                seconds, toks = await timed(eng, requests)
                times[name].append(seconds)
                tokens[name] = toks
        big_engine = engines[f"ranks{args.ranks}"]
        load = await big_engine.expert_load()
        before = (await big_engine.rank_info())[0]["dispatchRounds"]
        await big_engine.generate(requests)
        rounds = (await big_engine.rank_info())[0]["dispatchRounds"] - before
    finally:
        for eng in engines.values():
            await eng.close()
        ray.shutdown()

    configs = {}
    for name, values in times.items():
        median = statistics.median(values)
        configs[name] = {
            "batch_seconds_median": median,
            "batch_seconds_all": values,
            "requests_per_s": args.requests / median,
            "generated_tokens_per_s": tokens[name] / median,
            "same_answers_as_local": agree[name],
        }
    big = f"ranks{args.ranks}"
    ratios = {
        f"{big}_vs_ranks1_throughput": configs[big]["requests_per_s"]
        / configs["ranks1"]["requests_per_s"],
        f"{big}_vs_local_throughput": configs[big]["requests_per_s"]
        / configs["local"]["requests_per_s"],
        "ranks1_vs_local_throughput": configs["ranks1"]["requests_per_s"]
        / configs["local"]["requests_per_s"],
    }
    return {
        "benchmark": "engine_ranks",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "cuda": torch.cuda.is_available(),
        },
        "model": model_desc,
        "requests_per_batch": args.requests,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "threads_per_rank": args.threads,
        "configs": configs,
        "ratios": ratios,
        f"{big}_dispatch_rounds_per_batch": rounds,
        f"{big}_extra_ms_per_round_vs_ranks1": 1000
        * (configs[big]["batch_seconds_median"] - configs["ranks1"]["batch_seconds_median"])
        / max(rounds, 1),
        f"{big}_balancedness_per_layer": load.balancedness_per_layer(),
        f"{big}_tokens_per_rank_layer0": load.rank_loads(0, window=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench_engine_ranks.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({"model": result["model"], "ratios": result["ratios"]}, indent=2))
    for name, c in result["configs"].items():
        print(
            f"{name:>8}: {c['requests_per_s']:7.2f} req/s  "
            f"{c['generated_tokens_per_s']:7.1f} tok/s  same answers: {c['same_answers_as_local']}"
        )


if __name__ == "__main__":
    main()
