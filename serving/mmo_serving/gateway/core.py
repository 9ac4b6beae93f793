"""The gateway as middleware: one verdict per request, its audit line and its counters.

``Gateway.decide(info)`` parses the caller's headers (:mod:`.headers`), classifies the
body (:mod:`.policy`: declared class, images, PII), decides, writes one audit line and
counts the decision, then answers :class:`~.verdict.Local`, :class:`~.verdict.Offloaded`
or :class:`~.verdict.Refused`. An offload sends a copy rebuilt from the OpenAI schema
(:mod:`.outbound`: the client's unknown fields never leave), redacted when the policy
says so, to the hybrid endpoint (:mod:`.cloud`); when that fails the verdict is
``Local(outcome="fallback")`` and the front serves the request itself.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmo_serving.config import DataClass, IsolationArgs
from mmo_serving.gateway import outbound, pii
from mmo_serving.gateway.audit import AuditLog, MetricsSink, safe_token
from mmo_serving.gateway.headers import DEFAULT_TENANT, HeaderError, header, parse_headers
from mmo_serving.gateway.policy import (
    REMOTE_IMAGES_NOT_FETCHED,
    Classification,
    Decision,
    classify,
    decide,
)
from mmo_serving.gateway.request import Scan, map_texts, payload_sha256, scan
from mmo_serving.gateway.verdict import Local, Offloaded, Refused, RequestInfo, Verdict

if TYPE_CHECKING:
    from mmo_serving.gateway.cloud import CloudClient


def cloud_route(route: str) -> str:
    """``/v1/chat/completions`` -> ``chat/completions`` (appended to the endpoint base)."""
    path = route.strip("/")
    return path[3:] if path.startswith("v1/") else path


@dataclass(frozen=True)
class _Seen:
    """One request as the audit trail records it."""

    request_id: str  # audit-safe (a token, or its hash)
    tenant: str  # audit-safe
    route: str  # under /v1: chat/completions | embeddings
    classification: Classification | None  # None when a header was invalid
    scanned: Scan
    payload_sha256: str


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

        if decision.redact:
            # all texts scanned as one view, so a value split across parts is caught
            redacted, found = pii.redact_parts(scan(out).texts)
            counts.update(found)
            pieces = iter(redacted)  # scan and map_texts walk the body in the same order
            out = map_texts(out, lambda _text: next(pieces))
        hybrid = self.args.hybrid
        if hybrid is not None and hybrid.model:
            out["model"] = hybrid.model
        return out, counts

    async def decide(self, info: RequestInfo) -> Verdict:
        """The verdict for one request; the audit line and the counters are written."""
        seen = _Seen(
            request_id=safe_token(
                info.request_id or header(info.headers, "X-Request-Id"),
                uuid.uuid4().hex,
            ),
            tenant=safe_token(header(info.headers, "X-Tenant"), DEFAULT_TENANT),
            route=cloud_route(info.route),
            classification=None,
            scanned=scan(info.body),
            payload_sha256=payload_sha256(info.body),
        )
        try:
            caller = parse_headers(info.headers)
        except HeaderError as exc:
            self._record(seen, "refuse", exc.message, "none", 400, "sensitive")
            return Refused(400, exc.message, exc.code, param=exc.header)
        cls = classify(caller.data_class, seen.scanned, self.args)
        seen = _Seen(**{**seen.__dict__, "classification": cls})
        d = decide(self.args, cls, caller.route, info.queue_depth)
        if d.action == "refuse":
            self._record(seen, "refuse", d.reason, "none", d.status, d.data_class)
            return Refused(d.status, d.reason, d.code)
        if d.action == "local":
            return self._local(seen, "local", d.reason, caller.tenant, cls.data_class)
        return await self._offload(seen, d, info.body, caller.tenant, cls.data_class)

    async def _offload(
        self, seen: _Seen, d: Decision, body: dict[str, Any], tenant: str, local_class: DataClass
    ) -> Verdict:
        sent, counts = self.outbound_body(body, d, seen.route)
        if sent is None:
            reason = f"the body cannot be rebuilt for the {seen.route} endpoint: served locally"
            return self._local(seen, "fallback", reason, tenant, local_class)
        # every string that would leave, keys included
        leftover = pii.count_parts(scan(sent).strings())
        if leftover:  # defence in depth: never send what the detectors still flag
            reason = "PII left in the outbound body: served locally"
            return self._local(seen, "fallback", reason, tenant, local_class)
        cloud = self.cloud
        if cloud is None:
            reason = "no cloud client configured: served locally"
            return self._local(seen, "fallback", reason, tenant, local_class)
        from mmo_serving.gateway.cloud import CloudError

        try:
            response = await cloud.post(seen.route, sent)
        except CloudError as exc:
            reason = f"cloud endpoint failed: {exc}; served locally"
            return self._local(seen, "fallback", reason, tenant, local_class)
        self._record(seen, "offload", d.reason, d.destination, 200, d.data_class, counts)
        return Offloaded(d.data_class, tenant, response)

    def _local(
        self, seen: _Seen, outcome: str, reason: str, tenant: str, data_class: DataClass
    ) -> Local | Refused:
        if seen.scanned.remote_images:  # a fallback would have to fetch them
            message = f"{REMOTE_IMAGES_NOT_FETCHED} ({reason})"
            self._record(seen, "refuse", message, "none", 403, data_class)
            return Refused(403, message, "remote_image_refused")
        self._record(seen, outcome, reason, "local", 200, data_class)
        return Local(data_class, tenant, "fallback" if outcome == "fallback" else "local")

    def _record(
        self,
        seen: _Seen,
        outcome: str,
        reason: str,
        destination: str,
        status: int,
        data_class: str,
        redactions: Counter[str] | None = None,
    ) -> None:
        cls = seen.classification
        redactions = redactions or Counter()
        if self.metrics is not None:
            self.metrics.decision(self.args.mode, outcome, data_class)
            for kind, n in sorted(redactions.items()):
                self.metrics.redactions(kind, n)
        self.audit.write(
            {
                "requestId": seen.request_id,
                "tenant": seen.tenant,
                "mode": self.args.mode,
                "route": seen.route,
                "class": cls.data_class if cls else None,
                "declaredClass": cls.declared if cls else None,
                "sentClass": data_class if outcome == "offload" else None,
                "decision": outcome,
                "destination": destination,
                "status": status,
                "reason": reason,
                "payloadSha256": seen.payload_sha256,
                "images": {
                    "inline": seen.scanned.inline_images,
                    "remote": seen.scanned.remote_images,
                },
                "pii": dict(sorted((cls.pii if cls else Counter()).items())),
                "redactions": dict(sorted(redactions.items())),
            }
        )

    async def close(self) -> None:
        if self._cloud is not None:
            await self._cloud.aclose()
        self.audit.close()
