"""Runtime isolation gateway: sits in the Serve ingress before the cache and the model.

Pure of ray and torch (httpx is imported only in hybrid mode, by the cloud client).

Use from the Serve app (about ten lines)::

    from mmo_serving.gateway import Gateway
    from mmo_serving.gateway.audit import CounterSink
    from mmo_serving import metrics as m

    self.gateway = Gateway(args.isolation, metrics=CounterSink(
        m.POLICY_DECISIONS, m.PII_REDACTIONS))             # or metrics=None
    ...
    result = await self.gateway.handle(
        body, dict(request.headers), route="chat/completions",
        queue_depth=self.ongoing, run_local=self._serve_local)
    return JSONResponse(result.body, status_code=result.status, headers=result.headers)

    async def _serve_local(self, body, ctx):   # ctx: RequestContext
        ...  # cache keys start with ctx.cache_namespace (tenant|class), then the model

``handle`` classifies the body (``X-Data-Class`` header, policy default, images, PII),
decides (:mod:`.policy`), writes one audit line and counts the decision, then either
returns a 400/403 error body (OpenAI error shape), calls ``run_local`` with the
original body, or sends a redacted copy to the hybrid endpoint (:mod:`.cloud`),
serving locally (decision ``fallback``) when the endpoint fails. ``result.body`` is a
complete JSON response (the outbound request is sent with ``stream: false``).
Headers read: ``X-Data-Class``, ``X-Route`` (auto|local|cloud), ``X-Request-Id``,
``X-Tenant`` (client-asserted; pass ``tenant=`` from authentication where there is
one). Headers set on the result: ``X-Request-Id``, ``X-MMO-Decision``,
``X-MMO-Data-Class``.

The lower-level pieces are usable alone: ``Gateway.evaluate`` (decision without side
effects), :func:`.policy.classify`, :func:`.policy.decide`, :func:`.pii.detect`,
:func:`.pii.redact`.
"""

from mmo_serving.gateway.audit import AuditLog, CounterSink, MetricsSink
from mmo_serving.gateway.core import Evaluation, Gateway, GatewayResult, RequestContext
from mmo_serving.gateway.policy import Classification, Decision, classify, decide

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
    "classify",
    "decide",
]
