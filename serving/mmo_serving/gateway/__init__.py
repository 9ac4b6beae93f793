"""Runtime isolation gateway: middleware in front of the cache and the engine.

Pure of ray and torch (httpx is imported only in hybrid mode, by the cloud client).

The front calls it once per API request, after schema validation::

    gateway = build_gateway(args)                      # or Gateway(args.isolation, ...)
    verdict = await gateway.decide(RequestInfo(request_id, route, headers, body, depth))
    match verdict:
        case Local(data_class, tenant):   ...          # serve it (cache scoped by both)
        case Offloaded(response=resp):    ...          # answer the cloud's JSON
        case Refused() as r:              ...          # answer r.status, r.body()
    gateway.served(verdict, status, error)             # Local/Offloaded: once it has ended

:mod:`.headers` parses ``X-Data-Class``, ``X-Route`` and ``X-Tenant``; :mod:`.policy`
classifies and decides (pure); :mod:`.core` carries the decision out (offload with
fallback, audit line, counters). The lower-level pieces are usable alone:
:func:`.policy.classify`, :func:`.policy.decide`, :func:`.pii.detect`,
:func:`.pii.redact`.
"""

from __future__ import annotations

from mmo_serving.config import AppArgs
from mmo_serving.gateway.audit import AuditLog, CounterSink, MetricsSink, ServingMetricsSink
from mmo_serving.gateway.core import Gateway
from mmo_serving.gateway.policy import Classification, Decision, classify, decide
from mmo_serving.gateway.verdict import Local, Offloaded, Refused, RequestInfo, Verdict


def build_gateway(args: AppArgs) -> Gateway:
    """The gateway of the Serve app: counts into the serving metrics."""
    return Gateway(args.isolation, metrics=ServingMetricsSink())


__all__ = [
    "AuditLog",
    "Classification",
    "CounterSink",
    "Decision",
    "Gateway",
    "Local",
    "MetricsSink",
    "Offloaded",
    "Refused",
    "RequestInfo",
    "ServingMetricsSink",
    "Verdict",
    "build_gateway",
    "classify",
    "decide",
]
