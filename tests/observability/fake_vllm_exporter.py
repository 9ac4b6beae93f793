"""A stand-in for vLLM's engine metrics as Ray Serve LLM exports them (not a test module).

    python fake_vllm_exporter.py PORT

The dashboard harness needs engine metrics in states a short CPU run cannot reach (a
saturated KV cache, requests waiting, preemptions, slow first tokens), so this serves the
metric families with the names, types, labels and buckets vLLM 0.29 registers, read from
its source:

- ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``): each family's name
  (``vllm:...``), type, labels ``model_name`` (the served model name, mmo's model name)
  and ``engine`` (the engine index), the ``finished_reason`` label of
  ``vllm:request_success`` and the histograms' buckets;
- ``vllm/v1/metrics/ray_wrappers.py`` (``RayPrometheusStatLogger``, which Ray Serve LLM
  installs when ``LLMConfig.log_engine_metrics`` is on): the name sanitised to
  ``[a-zA-Z0-9_]`` (``vllm:x`` -> ``vllm_x``), a ``ReplicaId`` label (the Serve replica),
  and counters that are not exported before their first non-zero increment (the wrapper
  drops ``inc(0)``): a rank that never preempted has no preemption series;
- Ray's metrics endpoint then prefixes ``ray_`` and gives counters ``_total``, as Ray's own
  LLM dashboards query them (``ray_vllm_generation_tokens_total``), and adds its own
  ``WorkerId`` label (one of several Ray tags the dashboards do not use: Component,
  NodeAddress, SessionName, Version, otel_scope_*).

tests/vllm/test_vllm_up.py checks this table against what a real ``mmo up`` with engine
vllm exports (names, types, labels) and runs the same dashboard queries and engine rules
against it with a real Prometheus.

The values move a few times a second and are chosen so that the engine alerts can fire:
the KV cache of one replica nearly full with requests waiting, first tokens slower than
the 0.5 s latency target the fake mmo exporter reports.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

VLLM_VERSION = "0.29.0"
RAY_PREFIX = "ray_"
VLLM_LABELS = ("model_name", "engine")
RAY_WRAPPER_LABELS = ("ReplicaId",)
RAY_LABELS = ("WorkerId",)

TTFT_BUCKETS = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
]  # fmt: skip
INTER_TOKEN_BUCKETS = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
]  # fmt: skip
REQUEST_LATENCY_BUCKETS = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
]  # fmt: skip
FINISHED_REASONS = ["stop", "length", "abort", "error", "repetition"]

# vLLM name -> (type, extra labels beyond model_name/engine, buckets)
VLLM_FAMILIES: dict[str, tuple[str, tuple[str, ...], list[float] | None]] = {
    "vllm:num_requests_running": ("gauge", (), None),
    "vllm:num_requests_waiting": ("gauge", (), None),
    "vllm:kv_cache_usage_perc": ("gauge", (), None),
    "vllm:num_preemptions": ("counter", (), None),
    "vllm:prompt_tokens": ("counter", (), None),
    "vllm:generation_tokens": ("counter", (), None),
    "vllm:request_success": ("counter", ("finished_reason",), None),
    "vllm:time_to_first_token_seconds": ("histogram", (), TTFT_BUCKETS),
    "vllm:inter_token_latency_seconds": ("histogram", (), INTER_TOKEN_BUCKETS),
    "vllm:e2e_request_latency_seconds": ("histogram", (), REQUEST_LATENCY_BUCKETS),
    "vllm:request_queue_time_seconds": ("histogram", (), REQUEST_LATENCY_BUCKETS),
}


def ray_name(vllm_name: str) -> str:
    """The family name on Ray's endpoint (counters get ``_total`` there as well)."""
    return RAY_PREFIX + "".join(c if c.isalnum() or c == "_" else "_" for c in vllm_name)


def exported_series_names() -> dict[str, str]:
    """Names a query can use -> type: counters with _total, histograms' three series."""
    out: dict[str, str] = {}
    for name, (kind, _, _) in VLLM_FAMILIES.items():
        base = ray_name(name)
        if kind == "counter":
            out[base + "_total"] = kind
        elif kind == "histogram":
            out.update({base + s: kind for s in ("_bucket", "_sum", "_count")})
        else:
            out[base] = kind
    return out


def register(registry: CollectorRegistry) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for name, (kind, extra, buckets) in VLLM_FAMILIES.items():
        labels = [*VLLM_LABELS, *extra, *RAY_WRAPPER_LABELS, *RAY_LABELS]
        if kind == "gauge":
            metrics[name] = Gauge(ray_name(name), name, labels, registry=registry)
        elif kind == "counter":
            metrics[name] = Counter(ray_name(name), name, labels, registry=registry)
        else:
            metrics[name] = Histogram(
                ray_name(name), name, labels, buckets=buckets, registry=registry
            )
    return metrics


# Two data-parallel ranks of one model, each a Serve replica with engine index 0.
REPLICAS = [("0", "replica-a", "worker-1"), ("0", "replica-b", "worker-2")]


def tick(metrics: dict[str, Any], model: str, rng: random.Random) -> None:
    for i, (engine, replica, worker) in enumerate(REPLICAS):
        ids = {"model_name": model, "engine": engine, "ReplicaId": replica, "WorkerId": worker}
        full = i == 0  # the first rank is saturated
        metrics["vllm:num_requests_running"].labels(**ids).set(rng.randint(4, 16))
        metrics["vllm:num_requests_waiting"].labels(**ids).set(rng.randint(1, 6) if full else 0)
        usage = 0.95 + 0.04 * rng.random() if full else 0.3 + 0.3 * rng.random()
        metrics["vllm:kv_cache_usage_perc"].labels(**ids).set(usage)
        preempted = rng.randint(1, 2) if full else 0
        if preempted:  # as Ray's counter wrapper: no series before the first increment
            metrics["vllm:num_preemptions"].labels(**ids).inc(preempted)
        metrics["vllm:prompt_tokens"].labels(**ids).inc(rng.randint(200, 800))
        metrics["vllm:generation_tokens"].labels(**ids).inc(rng.randint(50, 200))
        for reason in FINISHED_REASONS[:3]:
            metrics["vllm:request_success"].labels(**ids, finished_reason=reason).inc(
                rng.randint(1, 3)
            )
        for _ in range(5):
            metrics["vllm:time_to_first_token_seconds"].labels(**ids).observe(
                0.6 + 2 * rng.random()
            )
            metrics["vllm:inter_token_latency_seconds"].labels(**ids).observe(
                0.02 + 0.08 * rng.random()
            )
            metrics["vllm:e2e_request_latency_seconds"].labels(**ids).observe(2 + 10 * rng.random())
            metrics["vllm:request_queue_time_seconds"].labels(**ids).observe(
                rng.random() if full else 0.01
            )


def main() -> int:
    port = int(sys.argv[1])
    model = sys.argv[2] if len(sys.argv) > 2 else "fake"
    registry = CollectorRegistry()
    metrics = register(registry)
    start_http_server(port, addr="127.0.0.1", registry=registry)
    rng = random.Random(0)
    while True:
        tick(metrics, model, rng)
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
