"""The gateway: classify, decide, audit, then serve locally or offload (with fallback)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmo_serving.config import IsolationArgs
from mmo_serving.gateway import outbound, pii
from mmo_serving.gateway.audit import AuditLog, MetricsSink, safe_token
from mmo_serving.gateway.policy import (
    Classification,
    DataClass,
    Decision,
    GatewayRequestError,
    classify,
    decide,
    parse_route,
)
from mmo_serving.gateway.request import Scan, map_texts, payload_sha256, scan

if TYPE_CHECKING:
    from mmo_serving.gateway.cloud import CloudClient

REQUEST_ID_HEADER = "x-request-id"
TENANT_HEADER = "x-tenant"


@dataclass(frozen=True)
class RequestContext:
    """What the local path needs to know about a request the gateway let through."""

    request_id: str
    tenant: str
    data_class: DataClass

    @property
    def cache_namespace(self) -> str:
        """Prefix for cache keys: the cache never mixes tenants or data classes."""
        return f"{self.tenant}|{self.data_class}"


@dataclass(frozen=True)
class Evaluation:
    context: RequestContext
    decision: Decision
    classification: Classification | None  # None when a header was invalid
    scanned: Scan
    payload_sha256: str


@dataclass
class GatewayResult:
    status: int  # 200 when served (locally or by the cloud), else 400/403
    body: dict[str, Any]  # the OpenAI-style response or error
    decision: str  # local | offload | refuse | fallback
    context: RequestContext
    headers: dict[str, str] = field(default_factory=dict)


LocalRunner = Callable[[dict[str, Any], RequestContext], Awaitable[dict[str, Any]]]


def _lookup(headers: Mapping[str, str], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


def error_body(message: str, code: str, status: int) -> dict[str, Any]:
    kind = "invalid_request_error" if status == 400 else "permission_denied"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class Gateway:
    def __init__(
        self,
        args: IsolationArgs,
        *,
        metrics: MetricsSink | None = None,
        audit: AuditLog | None = None,
        cloud: CloudClient | None = None,
    ) -> None:
        self.args = args
        self.metrics = metrics
        if cloud is None and args.mode == "hybrid" and args.hybrid is not None:
            from mmo_serving.gateway.cloud import check_endpoint

            check_endpoint(args.hybrid.endpoint)  # fail at start, not on the first offload
        self.audit = audit or AuditLog(args.audit_path, enabled=args.audit_enabled)
        self._cloud = cloud

    @property
    def cloud(self) -> CloudClient | None:
        if self._cloud is None and self.args.mode == "hybrid" and self.args.hybrid:
            from mmo_serving.gateway.cloud import CloudClient

            self._cloud = CloudClient(self.args.hybrid)
        return self._cloud

    # ---------------------------------------------------------------- pure part

    def evaluate(
        self,
        body: Any,
        headers: Mapping[str, str],
        *,
        queue_depth: int = 0,
        request_id: str | None = None,
        tenant: str | None = None,
    ) -> Evaluation:
        rid = safe_token(request_id or _lookup(headers, REQUEST_ID_HEADER), uuid.uuid4().hex)
        ten = safe_token(tenant or _lookup(headers, TENANT_HEADER), "default")
        scanned = scan(body)
        digest = payload_sha256(body)
        try:
            route = parse_route(headers)
            cls = classify(headers, scanned, self.args)
        except GatewayRequestError as exc:
            decision = Decision(
                "refuse", exc.message, "none", "sensitive", status=400, code=exc.code
            )
            ctx = RequestContext(rid, ten, "sensitive")
            return Evaluation(ctx, decision, None, scanned, digest)
        decision = decide(self.args, cls, route, queue_depth)
        return Evaluation(RequestContext(rid, ten, cls.data_class), decision, cls, scanned, digest)

    def outbound_body(
        self, body: dict[str, Any], decision: Decision, route: str = "chat/completions"
    ) -> tuple[dict[str, Any] | None, Counter[str]]:
        """What may be sent to the cloud, and the redactions made in it.

        The body is rebuilt from the OpenAI schema (:func:`.outbound.rebuild`: only the
        fields the gateway knows, never the client's other fields; ``stream: false``),
        then its texts are redacted when the decision says so. ``None`` when the body
        cannot be rebuilt for ``route``: it is then not sent."""
        counts: Counter[str] = Counter()
        out = outbound.rebuild(body, route)
        if out is None:
            return None, counts

        def redact(text: str) -> str:
            redacted, found = pii.redact(text)
            counts.update(found)
            return redacted

        if decision.redact:
            out = map_texts(out, redact)
        hybrid = self.args.hybrid
        if hybrid is not None and hybrid.model:
            out["model"] = hybrid.model
        return out, counts

    # ---------------------------------------------------------------- effects

    def _record(
        self,
        ev: Evaluation,
        outcome: str,
        *,
        route: str,
        reason: str,
        destination: str,
        status: int,
        data_class: str,
        redactions: Counter[str] | None = None,
    ) -> None:
        cls = ev.classification
        redactions = redactions or Counter()
        if self.metrics is not None:
            self.metrics.decision(self.args.mode, outcome, data_class)
            for kind, n in sorted(redactions.items()):
                self.metrics.redactions(kind, n)
        self.audit.write(
            {
                "requestId": ev.context.request_id,
                "tenant": ev.context.tenant,
                "mode": self.args.mode,
                "route": route,
                "class": cls.data_class if cls else None,
                "declaredClass": cls.declared if cls else None,
                "sentClass": data_class if outcome == "offload" else None,
                "decision": outcome,
                "destination": destination,
                "status": status,
                "reason": reason,
                "payloadSha256": ev.payload_sha256,
                "images": {
                    "inline": ev.scanned.inline_images,
                    "remote": ev.scanned.remote_images,
                },
                "pii": dict(sorted((cls.pii if cls else Counter()).items())),
                "redactions": dict(sorted(redactions.items())),
            }
        )

    async def handle(
        self,
        body: dict[str, Any],
        headers: Mapping[str, str],
        *,
        run_local: LocalRunner,
        route: str = "chat/completions",
        queue_depth: int = 0,
        request_id: str | None = None,
        tenant: str | None = None,
    ) -> GatewayResult:
        """Decide for one request and carry the decision out.

        ``route`` is the OpenAI path under ``/v1`` (``chat/completions`` or
        ``embeddings``; a request on another route is never offloaded): the cloud
        endpoint gets the same path, and a body rebuilt from the schema
        (:mod:`.outbound`), never the client's JSON.
        ``run_local(body, context)`` serves the original body locally (through the cache,
        keyed with ``context.cache_namespace``) and returns the JSON response.
        """
        ev = self.evaluate(
            body, headers, queue_depth=queue_depth, request_id=request_id, tenant=tenant
        )
        d = ev.decision
        common = {"X-Request-Id": ev.context.request_id, "X-MMO-Data-Class": d.data_class}

        async def local(outcome: str, reason: str) -> GatewayResult:
            if ev.scanned.remote_images:  # the fallback would have to fetch them
                reason += "; remote image URLs are never fetched here: refused"
                self._record(
                    ev, "refuse", route=route, reason=reason, destination="none",
                    status=403, data_class=ev.context.data_class,
                )  # fmt: skip
                body_out = error_body(reason, "remote_image_refused", 403)
                return GatewayResult(403, body_out, "refuse", ev.context, dict(common))
            self._record(
                ev, outcome, route=route, reason=reason, destination="local",
                status=200, data_class=ev.context.data_class,
            )  # fmt: skip
            resp = await run_local(body, ev.context)
            hdrs = {**common, "X-MMO-Decision": outcome, "X-MMO-Data-Class": ev.context.data_class}
            return GatewayResult(200, resp, outcome, ev.context, hdrs)

        if d.action == "refuse":
            self._record(
                ev, "refuse", route=route, reason=d.reason, destination="none",
                status=d.status, data_class=d.data_class,
            )  # fmt: skip
            body_out = error_body(d.reason, d.code, d.status)
            hdrs = {**common, "X-MMO-Decision": "refuse"}
            return GatewayResult(d.status, body_out, "refuse", ev.context, hdrs)
        if d.action == "local":
            return await local("local", d.reason)
        sent, counts = self.outbound_body(body, d, route)
        if sent is None:
            reason = f"the body cannot be rebuilt for the {route} endpoint: served locally"
            return await local("fallback", reason)
        leftover = Counter[str]()
        for text in scan(sent).strings():  # every string that would leave, keys included
            leftover.update(pii.count(text))
        if leftover:  # defence in depth: never send what the detectors still flag
            return await local("fallback", "PII left in the outbound body: served locally")
        cloud = self.cloud
        if cloud is None:
            return await local("fallback", "no cloud client configured: served locally")
        from mmo_serving.gateway.cloud import CloudError

        try:
            resp = await cloud.post(route, sent)
        except CloudError as exc:
            return await local("fallback", f"cloud endpoint failed: {exc}; served locally")
        self._record(
            ev, "offload", route=route, reason=d.reason, destination=d.destination,
            status=200, data_class=d.data_class, redactions=counts,
        )  # fmt: skip
        return GatewayResult(
            200, resp, "offload", ev.context, {**common, "X-MMO-Decision": "offload"}
        )

    async def aclose(self) -> None:
        if self._cloud is not None:
            await self._cloud.aclose()
        self.audit.close()
