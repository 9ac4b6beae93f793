"""The gateway as middleware: one verdict per request, its audit line and its counters.

``Gateway.decide(info)`` parses the caller's headers (:mod:`.headers`), classifies the
body (:mod:`.policy`: declared class, images, PII), decides and counts the decision,
then answers :class:`~.verdict.Local`, :class:`~.verdict.Offloaded` or
:class:`~.verdict.Refused`. A refusal's audit line is written there; the other two carry
a draft that the front writes with :meth:`Gateway.served` when the request has ended
(with its final status, and the error when the engine failed after the verdict).

An offload sends a copy rebuilt from the OpenAI schema (:mod:`.outbound`: the client's
unknown fields never leave), redacted when the policy says so, to the hybrid endpoint
(:mod:`.cloud`); when that fails, or the endpoint answers something that is not an
OpenAI reply, the verdict is ``Local(outcome="fallback")`` and the front serves the
request itself. The audit line then still says whether the body was sent, where, with
which class and redactions.

The PII scans (classification, redaction, the last check of what leaves) run in a
worker thread (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mmo_serving.config import DataClass, IsolationArgs
from mmo_serving.gateway import outbound, pii
from mmo_serving.gateway.audit import AuditKey, AuditLog, MetricsSink, audit_key, safe_token
from mmo_serving.gateway.headers import (
    DEFAULT_TENANT,
    HeaderError,
    Headers,
    header,
    parse_headers,
)
from mmo_serving.gateway.policy import (
    REMOTE_IMAGES_NOT_FETCHED,
    Classification,
    Decision,
    classify,
    decide,
)
from mmo_serving.gateway.request import Scan, map_texts, payload_hmac, scan
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

    request_id: str  # audit-safe (a token, or its keyed hash)
    tenant: str  # audit-safe
    route: str  # under /v1: chat/completions | embeddings
    classification: Classification | None  # None when a header was invalid
    scanned: Scan
    payload_hmac: str | None  # None: the body was never read


@dataclass(frozen=True)
class _Sent:
    """A body that left for the endpoint (the call may have failed afterwards)."""

    destination: str
    data_class: DataClass
    redactions: Counter[str] = field(default_factory=Counter)


class Gateway:
    def __init__(
        self,
        args: IsolationArgs,
        *,
        metrics: MetricsSink | None = None,
        audit: AuditLog | None = None,
        cloud: CloudClient | None = None,
        key: AuditKey | None = None,
    ) -> None:
        self.args = args
        self.metrics = metrics
        if cloud is None and args.mode == "hybrid" and args.hybrid is not None:
            from mmo_serving.gateway.cloud import check_endpoint

            check_endpoint(args.hybrid.endpoint)  # fail at start, not on the first offload
        self.audit = audit or AuditLog(args.audit_path, enabled=args.audit_enabled)
        self.key = key or audit_key()
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

    def _checked_outbound(
        self, body: dict[str, Any], decision: Decision, route: str
    ) -> tuple[dict[str, Any] | None, Counter[str], bool]:
        """:meth:`outbound_body` and whether the detectors still flag what would leave
        (every string of it, keys included): CPU work, run off the event loop."""
        sent, counts = self.outbound_body(body, decision, route)
        leftover = sent is not None and bool(pii.count_parts(scan(sent).strings()))
        return sent, counts, leftover

    def _ids(self, request_id: str | None, headers: Headers) -> tuple[str, str]:
        """The request id and tenant as the audit trail may write them."""
        rid = safe_token(
            request_id or header(headers, "X-Request-Id"), uuid.uuid4().hex, self.key.secret
        )
        return rid, safe_token(header(headers, "X-Tenant"), DEFAULT_TENANT, self.key.secret)

    def _read(
        self, body: dict[str, Any], declared: DataClass | None, classified: bool
    ) -> tuple[Scan, str, Classification | None]:
        """Scan, digest and (when ``classified``) classify the body: one PII scan of the
        request, run off the event loop."""
        scanned = scan(body)
        digest = payload_hmac(body, self.key.secret)
        cls = classify(declared, scanned, self.args) if classified else None
        return scanned, digest, cls

    async def decide(self, info: RequestInfo) -> Verdict:
        """The verdict for one request; the audit line and the counters are written.

        The scans run in a worker thread: a large body does not hold the event loop
        (and so the replica's other requests)."""
        rid, tenant = self._ids(info.request_id, info.headers)
        try:
            caller = parse_headers(info.headers)
        except HeaderError as exc:
            scanned, digest, _ = await asyncio.to_thread(self._read, info.body, None, False)
            seen = _Seen(rid, tenant, cloud_route(info.route), None, scanned, digest)
            self._refuse(seen, exc.message, 400, exc.code, "sensitive")
            return Refused(400, exc.message, exc.code, param=exc.header)
        scanned, digest, cls = await asyncio.to_thread(
            self._read, info.body, caller.data_class, True
        )
        assert cls is not None
        seen = _Seen(rid, tenant, cloud_route(info.route), cls, scanned, digest)
        d = decide(self.args, cls, caller.route, info.queue_depth)
        if d.action == "refuse":
            self._refuse(seen, d.reason, d.status, d.code, d.data_class)
            return Refused(d.status, d.reason, d.code)
        if d.action == "local":
            return self._local(seen, "local", d.reason, caller.tenant, cls.data_class)
        return await self._offload(seen, d, info.body, caller.tenant, cls.data_class)

    async def _offload(
        self, seen: _Seen, d: Decision, body: dict[str, Any], tenant: str, local_class: DataClass
    ) -> Verdict:
        sent, counts, leftover = await asyncio.to_thread(
            self._checked_outbound, body, d, seen.route
        )
        if sent is None:
            reason = f"the body cannot be rebuilt for the {seen.route} endpoint: served locally"
            return self._local(seen, "fallback", reason, tenant, local_class)
        if leftover:  # defence in depth: never send what the detectors still flag
            reason = "PII left in the outbound body: served locally"
            return self._local(seen, "fallback", reason, tenant, local_class)
        cloud = self.cloud
        if cloud is None:
            reason = "no cloud client configured: served locally"
            return self._local(seen, "fallback", reason, tenant, local_class)
        from mmo_serving.gateway.cloud import CloudError

        went = _Sent(d.destination, d.data_class, counts)
        try:
            response = await cloud.post(seen.route, sent)
        except CloudError as exc:
            if exc.sent:
                reason = f"cloud endpoint failed after the body was sent: {exc}; answered locally"
                return self._local(seen, "fallback", reason, tenant, local_class, went)
            reason = f"cloud endpoint failed before the body was sent: {exc}; served locally"
            return self._local(seen, "fallback", reason, tenant, local_class)
        problem = outbound.reply_problem(seen.route, response)
        if problem is not None:
            reason = f"cloud endpoint failed after the body was sent: answered {problem}; "
            reason += "answered locally"
            return self._local(seen, "fallback", reason, tenant, local_class, went)
        self._count("offload", d.data_class, went)
        draft = self._line(seen, "offload", d.reason, 200, went, "cloud")
        return Offloaded(d.data_class, tenant, response, audit=draft)

    def _local(
        self,
        seen: _Seen,
        outcome: str,
        reason: str,
        tenant: str,
        data_class: DataClass,
        went: _Sent | None = None,
    ) -> Local | Refused:
        if seen.scanned.remote_images:  # a fallback would have to fetch them
            message = f"{REMOTE_IMAGES_NOT_FETCHED} ({reason})"
            self._refuse(seen, message, 403, "remote_image_refused", data_class, went)
            return Refused(403, message, "remote_image_refused")
        self._count(outcome, data_class, went)
        draft = self._line(seen, outcome, reason, 200, went, "local")
        kind: Literal["local", "fallback"] = "fallback" if outcome == "fallback" else "local"
        return Local(data_class, tenant, kind, audit=draft)

    def served(self, verdict: Local | Offloaded, status: int, error: str = "") -> None:
        """Write the audit line of a request the gateway let through, once it has ended:
        ``status`` is what the front answered; ``error`` the fixed code of a failure after
        the verdict (the engine failed, the stream broke), which means nobody answered."""
        line = dict(verdict.audit)
        if not line:
            return  # a verdict not made by this gateway (tests build them by hand)
        line["status"] = status
        if error:
            line["error"] = error
            line["answeredBy"] = "none"
            line["reason"] = f"{line['reason']}; then failed: HTTP {status} ({error})"
        self.audit.write(line)

    def record_rejected(
        self, request_id: str | None, headers: Headers, route: str, status: int, code: str
    ) -> None:
        """The audit line of a request the front answered without a verdict (a body over
        the limit, bad JSON or schema, an unknown model, an internal error): one line
        for every request, whatever happened. ``code`` is the error's fixed code; the
        message is not written (it may quote the client)."""
        rid, tenant = self._ids(request_id, headers)
        seen = _Seen(rid, tenant, cloud_route(route), None, Scan(), None)
        reason = f"answered HTTP {status} ({code}) before the gateway decided"
        self.audit.write(self._line(seen, "rejected", reason, status, None, "none", code))

    def _count(self, outcome: str, data_class: str, went: _Sent | None) -> None:
        if self.metrics is not None:
            self.metrics.decision(self.args.mode, outcome, data_class)
            for kind, n in sorted((went.redactions if went else Counter()).items()):
                self.metrics.redactions(kind, n)

    def _refuse(
        self,
        seen: _Seen,
        reason: str,
        status: int,
        code: str,
        data_class: str,
        went: _Sent | None = None,
    ) -> None:
        """Count a refusal and write its line: the request ends here."""
        self._count("refuse", data_class, went)
        self.audit.write(self._line(seen, "refuse", reason, status, went, "none", code))

    def _line(
        self,
        seen: _Seen,
        outcome: str,
        reason: str,
        status: int,
        went: _Sent | None,
        answered_by: str,
        error: str | None = None,
    ) -> dict[str, Any]:
        cls = seen.classification
        if went is not None:
            destination = went.destination
        elif outcome in ("local", "fallback"):
            destination = "local"
        else:
            destination = "none"
        return {
            "requestId": seen.request_id,
            "tenant": seen.tenant,
            "mode": self.args.mode,
            "route": seen.route,
            "class": cls.data_class if cls else None,
            "declaredClass": cls.declared if cls else None,
            "decision": outcome,
            "sent": went is not None,
            "destination": destination,
            "sentClass": went.data_class if went else None,
            "answeredBy": answered_by,
            "status": status,
            "error": error,
            "reason": reason,
            "payloadHmac": seen.payload_hmac,
            "digestKey": self.key.scope,
            "images": {
                "inline": seen.scanned.inline_images,
                "remote": seen.scanned.remote_images,
            },
            "pii": dict(sorted((cls.pii if cls else Counter()).items())),
            "redactions": dict(sorted((went.redactions if went else Counter()).items())),
        }

    async def close(self) -> None:
        if self._cloud is not None:
            await self._cloud.aclose()
        self.audit.close()
