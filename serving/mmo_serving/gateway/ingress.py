"""The Serve ingress's seam (``mmo_serving.gateway_types``) on top of :class:`Gateway`.

``build_gateway(args)`` is what :func:`mmo_serving.gateway_types.load_gateway` calls;
its ``decide(info)`` runs :meth:`Gateway.handle` with a local runner that only marks
"serve locally", so that the ingress keeps its own local path (cache, batching,
streaming):

- ``local`` (and ``fallback``: offload failed) -> ``Decision("local", data_class)``;
  the ingress serves it, caching under (model version, data class, tenant).
- ``offload`` -> ``Decision("offload", response=<the endpoint's JSON>)``.
- ``refuse`` -> ``Decision("refuse", status=400|403, reason=<message>)``.
"""

from __future__ import annotations

from typing import Any

from mmo_serving.config import AppArgs
from mmo_serving.gateway.audit import MetricsSink
from mmo_serving.gateway.core import Gateway, RequestContext
from mmo_serving.gateway_types import Decision, RequestInfo

_LOCAL = {"__mmo_serve_locally__": True}


class ServingMetricsSink:
    """Counts into ``mmo_serving.metrics`` (resolved at first use, inside the replica)."""

    def decision(self, mode: str, decision: str, data_class: str) -> None:
        from mmo_serving.metrics import serving_metrics

        serving_metrics().policy_decision(mode=mode, decision=decision, data_class=data_class)

    def redactions(self, kind: str, count: int) -> None:
        from mmo_serving.metrics import serving_metrics

        serving_metrics().pii_redactions(kind, count)


def cloud_route(route: str) -> str:
    """``/v1/chat/completions`` -> ``chat/completions`` (appended to the endpoint base)."""
    path = route.strip("/")
    return path[3:] if path.startswith("v1/") else path


class IngressGateway:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def decide(self, info: RequestInfo) -> Decision:
        async def mark_local(_body: dict[str, Any], _ctx: RequestContext) -> dict[str, Any]:
            return _LOCAL

        result = await self.gateway.handle(
            info.body,
            info.headers,
            run_local=mark_local,
            route=cloud_route(info.route),
            queue_depth=info.queue_depth,
            request_id=info.request_id,
            tenant=info.tenant,
        )
        extra = {"decision": result.decision, "headers": result.headers}
        data_class = result.context.data_class
        if result.decision == "refuse":
            message = str(result.body["error"]["message"])
            return Decision("refuse", data_class, message, status=result.status, extra=extra)
        if result.body is _LOCAL:
            return Decision("local", data_class, result.decision, status=200, extra=extra)
        return Decision("offload", data_class, "offload", 200, response=result.body, extra=extra)

    async def close(self) -> None:
        await self.gateway.aclose()


def build_gateway(args: AppArgs, *, metrics: MetricsSink | None = None) -> IngressGateway:
    sink = metrics if metrics is not None else ServingMetricsSink()
    return IngressGateway(Gateway(args.isolation, metrics=sink))
