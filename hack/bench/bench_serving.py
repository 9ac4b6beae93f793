#!/usr/bin/env python
"""Serving benchmarks, measured side by side in one run on one private local Ray.

1. ``@serve.batch`` on (max batch 32) against off (max batch 1) at 32 concurrent
   clients, on the real model (one deployment, switched through ``user_config`` →
   ``reconfigure``; rounds alternate on/off so that noise hits both alike).
2. A cache hit against a miss, end to end over HTTP (same requests, sequential).
3. The Serve HTTP path against a bare uvicorn app serving the same FastAPI route on
   the same machine (the no-model path ``GET /v1/models``): sequential req/s and p50.

Targets: batching >= 1.3x throughput at 32 clients; a cache hit >= 3x faster
than a miss; >= 100 req/s sequential on the no-model path with p50 <= 10 ms.

    .venv/bin/python hack/bench/bench_serving.py --out /tmp/bench_serving.json

Writes JSON (``--out``) and prints a summary. Machines here are shared and noisy: the
ratios are what to read, not the absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Any

import httpx
import numpy as np

MODEL = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def sample_images(n: int) -> list[str]:
    from mmo_serving.images import encode_data_url
    from mmo_serving.model.tasks import make_sample

    return [
        encode_data_url(np.asarray(make_sample(i, seed=7, split="test").image)) for i in range(n)
    ]


def chat_body(image: str, question: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": question},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            }
        ],
    }


QUESTIONS = ("what colour is the circle?", "how many shapes are there?", "is there a red square?")


# ------------------------------------------------------------------------- measurements


async def concurrent_round(url: str, clients: int, per_client: int, images: list[str], tag: str):
    """``clients`` concurrent clients, each sending ``per_client`` requests in turn."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        latencies: list[float] = []

        async def one_client(c: int) -> None:
            for k in range(per_client):
                i = c * per_client + k
                body = chat_body(images[i % len(images)], f"{QUESTIONS[i % 3]} {tag}{i}")
                t0 = time.perf_counter()
                r = await client.post("/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    n = clients * per_client
    return {"requests": n, "seconds": wall, "rps": n / wall, "p50_s": pct(latencies, 50)}


def sequential(url: str, path: str, n: int, warmup: int = 20) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(warmup):
            client.get(path).raise_for_status()
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            s = time.perf_counter()
            client.get(path).raise_for_status()
            lat.append(time.perf_counter() - s)
        wall = time.perf_counter() - t0
    return {
        "requests": n,
        "rps": n / wall,
        "p50_ms": pct(lat, 50) * 1e3,
        "p95_ms": pct(lat, 95) * 1e3,
    }


def cache_hit_vs_miss(url: str, images: list[str], n: int) -> dict[str, Any]:
    miss, hit = [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(n):
            body = chat_body(images[i % len(images)], f"{QUESTIONS[i % 3]} cache{i}")
            for bucket, want in ((miss, "miss"), (hit, "hit")):
                t0 = time.perf_counter()
                r = client.post("/v1/chat/completions", json=body)
                bucket.append(time.perf_counter() - t0)
                r.raise_for_status()
                assert r.headers["x-mmo-cache"] == want, r.headers
    return {
        "requests_each": n,
        "miss_p50_ms": pct(miss, 50) * 1e3,
        "hit_p50_ms": pct(hit, 50) * 1e3,
        "ratio_p50": pct(miss, 50) / pct(hit, 50),
    }


# ------------------------------------------------------------------------- bare uvicorn

BARE_APP = textwrap.dedent(
    """
    import sys, time, uvicorn
    from fastapi import FastAPI
    from mmo_serving.openai import schema as oa

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.get("/v1/models")
    async def models():
        return oa.ModelList(data=[oa.ModelCard(id="bench", created=created)]).model_dump()

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


def start_bare(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).raise_for_status()
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("bare uvicorn app did not start")


# ------------------------------------------------------------------------- main


def deploy(serve: Any, args: dict[str, Any], batching: dict[str, Any], name: str, prefix: str):
    from mmo_serving.app import build_app

    app = build_app(
        args,
        options={"version": "bench", "user_config": {"batching": batching}},
    )
    serve.run(app, name=name, route_prefix=prefix)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--source", default="builtin://shapes-moe")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--per-client", type=int, default=4, help="requests per client per round")
    p.add_argument("--rounds", type=int, default=3, help="on/off round pairs")
    p.add_argument("--cache-requests", type=int, default=30)
    p.add_argument("--sequential", type=int, default=500, help="no-model requests per path")
    p.add_argument("--wait-ms", type=float, default=10.0, help="batch wait when batching is on")
    p.add_argument("--out", default="bench_serving.json")
    a = p.parse_args()

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray
    from ray import serve

    load_before = os.getloadavg()
    images = sample_images(16)
    http_port, metrics_port, bare_port = free_port(), free_port(), free_port()
    ray.init(
        num_cpus=4,
        num_gpus=2,
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        log_to_driver=False,
    )
    bare = None
    result: dict[str, Any] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        url = f"http://127.0.0.1:{http_port}"
        base = {"name": MODEL, "modelSource": a.source, "numGpus": 1, "maxNewTokens": 4}
        on = {"maxBatchSize": 32, "batchWaitTimeoutS": a.wait_ms / 1000}
        off = {"maxBatchSize": 1, "batchWaitTimeoutS": 0.0}
        no_cache = {**base, "cache": {"enabled": False}}
        t0 = time.perf_counter()
        deploy(serve, no_cache, on, "batch", "/batch")
        deploy(serve, base, on, "cached", "/cached")
        startup_s = time.perf_counter() - t0

        # 1. batching on/off, alternating rounds, same deployment
        asyncio.run(concurrent_round(f"{url}/batch", 8, 2, images, "warm"))
        rounds: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for r in range(a.rounds):
            for mode, cfg in (("on", on), ("off", off)):
                deploy(serve, no_cache, cfg, "batch", "/batch")  # reconfigure only
                out = asyncio.run(
                    concurrent_round(f"{url}/batch", a.clients, a.per_client, images, f"{mode}{r}-")
                )
                rounds[mode].append(out)
        rps_on = statistics.median(x["rps"] for x in rounds["on"])
        rps_off = statistics.median(x["rps"] for x in rounds["off"])
        result["batching"] = {
            "clients": a.clients,
            "rounds": rounds,
            "rps_on_median": rps_on,
            "rps_off_median": rps_off,
            "ratio": rps_on / rps_off,
            "target": 1.3,
        }

        # 2. cache hit vs miss
        cache = cache_hit_vs_miss(f"{url}/cached", images, a.cache_requests)
        result["cache"] = {**cache, "target": 3.0}

        # 3. Serve HTTP path vs bare uvicorn, no model, sequential (alternating halves)
        bare = start_bare(bare_port)
        bare_url = f"http://127.0.0.1:{bare_port}"
        half = a.sequential // 2
        serve_runs = [sequential(f"{url}/cached", "/v1/models", half)]
        bare_runs = [sequential(bare_url, "/v1/models", half)]
        serve_runs.append(sequential(f"{url}/cached", "/v1/models", half))
        bare_runs.append(sequential(bare_url, "/v1/models", half))

        def merge(runs: list[dict[str, float]]) -> dict[str, float]:
            return {
                "requests": sum(r["requests"] for r in runs),
                "rps": statistics.mean(r["rps"] for r in runs),
                "p50_ms": statistics.mean(r["p50_ms"] for r in runs),
                "p95_ms": statistics.mean(r["p95_ms"] for r in runs),
            }

        s, b = merge(serve_runs), merge(bare_runs)
        result["no_model_path"] = {
            "path": "GET /v1/models",
            "serve": s,
            "bare_uvicorn": b,
            "serve_vs_bare_rps": s["rps"] / b["rps"],
            "serve_vs_bare_p50": s["p50_ms"] / b["p50_ms"],
            "target": {"rps": 100, "p50_ms": 10},
        }
        result["targets_met"] = {
            "batching_1.3x": result["batching"]["ratio"] >= 1.3,
            "cache_3x": cache["ratio_p50"] >= 3.0,
            "sequential_100rps": s["rps"] >= 100,
            "sequential_p50_10ms": s["p50_ms"] <= 10,
        }
        result["startup_s"] = startup_s
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(timeout=30)
        serve.shutdown()
        ray.shutdown()
    result["model_source"] = a.source
    result["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "ray": ray.__version__,
    }
    with open(a.out, "w") as fh:
        json.dump(result, fh, indent=2)
    bt, c, n = result["batching"], result["cache"], result["no_model_path"]
    print(
        f"batching at {bt['clients']} clients: on {bt['rps_on_median']:.1f} req/s, "
        f"off {bt['rps_off_median']:.1f} req/s -> {bt['ratio']:.2f}x (target 1.3x)\n"
        f"cache: miss p50 {c['miss_p50_ms']:.1f} ms, hit p50 {c['hit_p50_ms']:.1f} ms "
        f"-> {c['ratio_p50']:.1f}x (target 3x)\n"
        f"no-model GET /v1/models sequential: Serve {n['serve']['rps']:.0f} req/s "
        f"p50 {n['serve']['p50_ms']:.2f} ms; bare uvicorn {n['bare_uvicorn']['rps']:.0f} req/s "
        f"p50 {n['bare_uvicorn']['p50_ms']:.2f} ms (target >= 100 req/s, p50 <= 10 ms)\n"
        f"written to {a.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
