#!/usr/bin/env python
"""What mmo's front costs in front of vLLM: the same tiny Qwen3-MoE served by Ray Serve
LLM's own OpenAI app (``build_openai_app``) and by mmo's app (``build_app``: gateway,
audit, metrics; answer cache off so every request reaches the engine), side by side on
one local Ray, each with its own vLLM engine built from the same ``LLMConfig``
(``llm_config(args, accelerator="cpu")``).

Rounds alternate the order of the two apps (ABBA) so that drift on a shared machine falls
on both. Per round: sequential requests (latency: p50 of each app, the difference is
what mmo adds) and ``--concurrency`` clients at once (throughput: answers a second).
Greedy, ``--max-tokens`` tokens, a different prompt each request. Prints one JSON object.

    .venv-vllm/bin/python hack/bench/bench_vllm_front.py [--rounds 4] [--requests 16]

Needs .venv-vllm (``make vllm-venv``); the checkpoint is generated with
``tests/vllm/checkpoints.py`` (random weights, no download) unless ``--checkpoint DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-qwen3-moe"
WORDS = ("sea", "sky", "tree", "stone", "river", "cloud", "light", "road", "bird", "fire")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _checkpoint(arg: str | None, work: Path) -> Path:
    if arg:
        return Path(arg).resolve()
    sys.path.insert(0, str(ROOT / "tests/vllm"))
    import checkpoints

    return Path(checkpoints.make_qwen3_moe(work / "qwen3-moe"))


def _args(checkpoint: Path, audit: Path) -> Any:
    from mmo_serving.config import AppArgs

    return AppArgs.model_validate(
        {
            "name": MODEL,
            "modelSource": f"file://{checkpoint}",
            "engine": "vllm",
            "modalities": ["text"],
            "batching": {"maxBatchSize": 8},
            "cache": {"enabled": False},
            "isolation": {"auditPath": str(audit)},
            "vllm": {"maxModelLen": 512, "engineArgs": {"enforce_eager": True}},
        }
    )


class Client:
    def __init__(self, base: str, max_tokens: int) -> None:
        self.http = httpx.Client(base_url=base, timeout=300)
        self.max_tokens = max_tokens
        self.n = 0

    def ask(self) -> float:
        self.n += 1
        prompt = f"Tell me about the {WORDS[self.n % len(WORDS)]} number {self.n}."
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        start = time.perf_counter()
        r = self.http.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        return time.perf_counter() - start


def _latencies(client: Client, n: int) -> list[float]:
    return [client.ask() for _ in range(n)]


def _throughput(client: Client, n: int, concurrency: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: client.ask(), range(n)))
    return n / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a Hugging Face checkpoint directory")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--requests", type=int, default=16, help="per app, phase and round")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=8)
    # each LLM deployment's placement group holds 2 CPUs on the CPU: 2 x 2, plus the front
    p.add_argument("--num-cpus", type=int, default=6)
    opts = p.parse_args()

    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    from mmo_serving.app import build_app
    from mmo_serving.vllm_args import llm_config

    work = Path(tempfile.mkdtemp(prefix="bench-vllm-front-"))
    checkpoint = _checkpoint(opts.checkpoint, work)
    args = _args(checkpoint, work / "audit.jsonl")
    config = llm_config(args, accelerator="cpu")
    port = _free_port()
    ray.init(num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        t = time.perf_counter()
        ray_app = build_openai_app(
            {
                "llm_configs": [config],
                "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0}},
            }
        )
        serve.run(ray_app, name="ray", route_prefix="/ray")
        serve.run(build_app(args, accelerator="cpu"), name="mmo", route_prefix="/mmo")
        start_s = time.perf_counter() - t
        base = f"http://127.0.0.1:{port}"
        clients = {
            "ray": Client(f"{base}/ray", opts.max_tokens),
            "mmo": Client(f"{base}/mmo", opts.max_tokens),
        }
        for c in clients.values():  # warm up: first requests compile and fill caches
            _latencies(c, 4)
        lat: dict[str, list[float]] = {"ray": [], "mmo": []}
        tput: dict[str, list[float]] = {"ray": [], "mmo": []}
        for r in range(opts.rounds):
            order = ("ray", "mmo") if r % 2 == 0 else ("mmo", "ray")
            for name in order:
                lat[name] += _latencies(clients[name], opts.requests)
            for name in order:
                tput[name].append(_throughput(clients[name], opts.requests, opts.concurrency))
        p50 = {k: statistics.median(v) * 1000 for k, v in lat.items()}
        rps = {k: statistics.median(v) for k, v in tput.items()}
        report = {
            "model": f"{MODEL} (random weights, float32, vLLM CPU, enforce_eager)",
            "max_tokens": opts.max_tokens,
            "rounds": opts.rounds,
            "requests_per_phase": opts.requests,
            "concurrency": opts.concurrency,
            "serve_run_both_s": round(start_s, 1),
            "p50_ms": {k: round(v, 2) for k, v in p50.items()},
            "added_p50_ms": round(p50["mmo"] - p50["ray"], 2),
            "throughput_rps": {k: round(v, 2) for k, v in rps.items()},
            "throughput_ratio_mmo_over_ray": round(rps["mmo"] / rps["ray"], 3),
            "target": "ratio >= 0.9, added p50 <= 5 ms",
        }
        print(json.dumps(report, indent=2))
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    sys.exit(main())
