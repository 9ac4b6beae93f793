"""The operator's own Prometheus metrics (the names the alert rules and dashboards use).

A private registry, served by ``serve(port)`` on ``/metrics``; labels stay bounded
(``reason`` is one of ``ERROR_REASONS``, ``ready`` is ``true``/``false``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

ERROR_REASONS = (
    "InvalidSpec",
    "DoesNotFit",
    "KubeRayNotInstalled",
    "Conflict",
    "Throttled",
    "ServerError",
    "Unprocessable",
    "Forbidden",
    "NotFound",
    "Unavailable",
    "Other",
)

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_DURATION = Histogram(
    "mmo_operator_reconcile_duration_seconds",
    "Time to reconcile one MultimodalModel (validate, plan, build, apply, observe, status).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "mmo_operator_reconcile_errors_total",
    "Reconciles that ended in an error, by reason.",
    ["reason"],
    registry=REGISTRY,
)
OBJECTS = Gauge(
    "mmo_operator_objects",
    "MultimodalModels handled by this operator, by their Ready condition.",
    ["ready"],
    registry=REGISTRY,
)
UNRECONCILED = Gauge(
    "mmo_operator_objects_unreconciled",
    "MultimodalModels whose last reconcile failed to write (their Reconciled condition is "
    "False); their Ready condition still follows the serving side.",
    registry=REGISTRY,
)
REBALANCES = Counter(
    "mmo_operator_rebalances_total",
    "Expert placement plans applied in place by the rebalance timer.",
    registry=REGISTRY,
)
LATENCY_TARGET = Gauge(
    "mmo_operator_model_latency_target_seconds",
    "Each model's p95 latency target (spec.autoscaling.latencyTargetMs), for the alerts.",
    ["namespace", "model"],
    registry=REGISTRY,
)

_lock = threading.Lock()
_ready: dict[str, bool] = {}
_targets: dict[str, float] = {}
_failing: set[str] = set()


def _refresh() -> None:
    ready = sum(1 for v in _ready.values() if v)
    OBJECTS.labels(ready="true").set(ready)
    OBJECTS.labels(ready="false").set(len(_ready) - ready)
    UNRECONCILED.set(len(_failing))


def set_reconciled(key: str, reconciled: bool) -> None:
    with _lock:
        if reconciled:
            _failing.discard(key)
        else:
            _failing.add(key)
        _refresh()


def set_ready(key: str, ready: bool) -> None:
    with _lock:
        _ready[key] = ready
        _refresh()


def forget(key: str) -> None:
    with _lock:
        _ready.pop(key, None)
        _failing.discard(key)
        _refresh()
        if key in _targets:
            LATENCY_TARGET.remove(*key.split("/", 1))
            del _targets[key]


def set_latency_target(key: str, seconds: float) -> None:
    """``key`` is NAMESPACE/NAME."""
    with _lock:
        _targets[key] = seconds
        LATENCY_TARGET.labels(*key.split("/", 1)).set(seconds)


def count_error(reason: str) -> None:
    RECONCILE_ERRORS.labels(reason=reason if reason in ERROR_REASONS else "Other").inc()


def count_rebalance() -> None:
    REBALANCES.inc()


@contextmanager
def timed() -> Iterator[None]:
    with RECONCILE_DURATION.time():
        yield


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics in a background thread."""
    start_http_server(port, addr=addr, registry=REGISTRY)
    with _lock:
        _refresh()  # export both gauge series from the start
