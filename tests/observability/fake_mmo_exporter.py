"""A stand-in exporter for proving the dashboard harness (not a test module).

    python fake_mmo_exporter.py SERVING_PORT OPERATOR_PORT

Serving side: every metric of `mmo_serving.metrics.SERVING_METRICS`, with its labels, exported
under Ray's `ray_` prefix (as Ray does), changing a few times a second. Operator side: the
operator's real metrics module (`mmo_operator.metrics`) driven through its own functions.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mmo_operator import metrics as operator_metrics
from mmo_serving.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_S, SERVING_METRICS

LABEL_VALUES = {
    "route": ["/v1/chat/completions", "/v1/embeddings"],
    "modality": ["text", "image"],
    "cache": ["hit", "miss"],
    "mode": ["private"],
    "code": ["200", "400", "403"],
    "layer": ["0", "1"],
    "expert": [str(e) for e in range(4)],
    "rank": [str(r) for r in range(2)],
    "decision": ["local", "offload", "refuse", "fallback"],
    "class": ["public", "internal", "sensitive"],
    "kind": ["email", "phone"],
}


def serving_metrics(registry: CollectorRegistry) -> dict[str, tuple[Any, tuple[str, ...]]]:
    out: dict[str, tuple[Any, tuple[str, ...]]] = {}
    for name, (kind, labels) in SERVING_METRICS.items():
        ray_name = "ray_" + name
        if kind == "counter":
            metric: Any = Counter(ray_name, name, labels, registry=registry)
        elif kind == "gauge":
            metric = Gauge(ray_name, name, labels, registry=registry)
        else:
            buckets = LATENCY_BUCKETS_S if "latency" in name else BATCH_SIZE_BUCKETS
            metric = Histogram(ray_name, name, labels, buckets=buckets, registry=registry)
        out[name] = (metric, labels)
    return out


def tick(metrics: dict[str, tuple[Any, tuple[str, ...]]], rng: random.Random) -> None:
    for name, (metric, labels) in metrics.items():
        for combo in itertools.product(*(LABEL_VALUES[label] for label in labels)):
            child = metric.labels(*combo) if labels else metric
            if isinstance(metric, Counter):
                child.inc(rng.randint(1, 5))
            elif isinstance(metric, Gauge):
                child.set(1.0 + rng.random() if "balanced" in name else rng.randint(0, 8))
            else:
                child.observe(rng.random() * (2 if "latency" in name else 16))


def main() -> int:
    serving_port, operator_port = int(sys.argv[1]), int(sys.argv[2])
    registry = CollectorRegistry()
    metrics = serving_metrics(registry)
    start_http_server(serving_port, addr="127.0.0.1", registry=registry)
    operator_metrics.serve(operator_port, addr="127.0.0.1")
    rng = random.Random(0)
    for step in itertools.count():
        tick(metrics, rng)
        with operator_metrics.timed():
            time.sleep(0.01)
        operator_metrics.set_ready(f"ml/model-{step % 3}", step % 3 != 0)
        operator_metrics.set_reconciled(f"ml/model-{step % 3}", step % 3 != 1)
        operator_metrics.set_latency_target(f"ml/model-{step % 3}", 0.5)
        operator_metrics.count_error("Conflict")
        operator_metrics.count_rebalance()
        time.sleep(0.25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
