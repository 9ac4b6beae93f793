"""Runtime isolation gateway: sits in the Serve ingress before the cache and the model.

Pure of ray and torch (httpx is imported only in hybrid mode, by the cloud client).

The Serve app reaches it through the seam in :mod:`mmo_serving.gateway_types`:
``load_gateway(args)`` calls :func:`build_gateway` and the ingress awaits
``gateway.decide(RequestInfo)`` before the cache and the model (see :mod:`.ingress`).

Used directly (any app, about ten lines)::

    gateway = Gateway(args.isolation, metrics=sink)   # sink: MetricsSink or None
    result = await gateway.handle(
        body, headers, route="chat/completions", queue_depth=ongoing,
        run_local=serve_local)                        # async (body, RequestContext) -> dict
    return JSONResponse(result.body, status_code=result.status, headers=result.headers)

``handle`` classifies the body (``X-Data-Class`` header, policy default, images, PII),
decides (:mod:`.policy`), writes one audit line and counts the decision, then either
returns a 400/403 error body (OpenAI error shape), calls ``run_local`` with the
original body, or sends a copy rebuilt from the OpenAI schema (:mod:`.outbound`: the
client's unknown fields never leave) and redacted to the hybrid endpoint
(:mod:`.cloud`), serving locally (decision ``fallback``) when the endpoint fails.
``result.body`` is a complete JSON response (the outbound request is sent with
``stream: false``).
Headers read: ``X-Data-Class``, ``X-Route`` (auto|local|cloud), ``X-Request-Id``,
``X-Tenant`` (client-asserted; pass ``tenant=`` from authentication where there is
one). Headers set on the result: ``X-Request-Id``, ``X-MMO-Decision``,
``X-MMO-Data-Class``.

The lower-level pieces are usable alone: ``Gateway.evaluate`` (decision without side
effects), :func:`.policy.classify`, :func:`.policy.decide`, :func:`.pii.detect`,
:func:`.pii.redact`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmo_serving.gateway.audit import AuditLog, CounterSink, MetricsSink
from mmo_serving.gateway.core import Evaluation, Gateway, GatewayResult, RequestContext
from mmo_serving.gateway.policy import Classification, Decision, classify, decide

if TYPE_CHECKING:
    from mmo_serving.config import AppArgs
    from mmo_serving.gateway.ingress import IngressGateway


def build_gateway(args: AppArgs, **kwargs: Any) -> IngressGateway:
    """The ingress seam's factory (``mmo_serving.gateway_types.load_gateway``)."""
    from mmo_serving.gateway.ingress import build_gateway as build

    return build(args, **kwargs)


__all__ = [
    "AuditLog",
    "Classification",
    "CounterSink",
    "Decision",
    "Evaluation",
    "Gateway",
    "GatewayResult",
    "MetricsSink",
    "RequestContext",
    "build_gateway",
    "classify",
    "decide",
]
