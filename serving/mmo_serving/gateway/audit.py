"""Audit trail (one JSON line per decision) and the decision counters.

A line holds: ``time`` (UTC, ISO 8601), ``requestId``, ``tenant``, ``mode``, ``route``,
``class`` (after classification), ``declaredClass``, ``decision`` (local, offload,
refuse, fallback), ``sent`` (whether the redacted body was sent to the endpoint, even
when the call then failed), ``destination`` (where the body went: ``local``, the
endpoint, or ``none``), ``sentClass`` (the class of what was sent), ``answeredBy``
(``cloud``, ``local`` or ``none``: who produced the answer), ``status`` (the HTTP
status answered), ``error`` (the error's fixed code, null when the request was answered;
set with status 500 when the engine failed after the verdict), ``reason``,
``payloadHmac`` and ``digestKey`` (see below), ``images``, ``pii`` and ``redactions``
(counts per kind; ``redactions`` are those of the body that was sent).

One line per request: a refusal's at the verdict; a request the gateway let through gets
its line when it has ended (``Gateway.served``), so the line says whether it failed.

Never raw content: the reason strings are built from fixed text and policy values only;
a request id or tenant is written as sent only when it is a plain token
(``[A-Za-z0-9._:-]{1,64}``) in which no PII is detected, otherwise as a keyed hash,
since headers are client input.

Keyed digests: ``payloadHmac`` is HMAC-SHA256 of the canonical JSON body under the
deployment's audit key (environment variable ``MMO_AUDIT_KEY``: in a cluster the
operator mounts it from a Secret, ``mmo up`` makes a random one per run), so that a
guessed body cannot be confirmed from the trail. Without the variable each replica
makes a random key (``digestKey: replica``): digests then match only within one
replica's lifetime.

Lines go to stdout (``IsolationArgs.audit_path`` unset) or are appended to a file with
one ``write`` per line on an ``O_APPEND`` descriptor, so that several replicas sharing a
file do not interleave within a line.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, Protocol

from mmo_serving.config import AUDIT_KEY_ENV
from mmo_serving.gateway import pii

_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True)
class AuditKey:
    secret: bytes
    scope: str  # "deployment": from MMO_AUDIT_KEY; "replica": random, this process only


def audit_key(env: Mapping[str, str] | None = None) -> AuditKey:
    """The deployment's audit key from ``MMO_AUDIT_KEY``, else a random one."""
    value = (env if env is not None else os.environ).get(AUDIT_KEY_ENV, "")
    if value:
        return AuditKey(value.encode("utf-8"), "deployment")
    return AuditKey(secrets.token_bytes(32), "replica")


def safe_token(value: str | None, default: str, key: bytes) -> str:
    """``value`` if it is a plain token without PII, else ``hmac:<16 hex>`` of it."""
    if value is None or value == "":
        return default
    if _TOKEN.fullmatch(value) and not pii.count(value):
        return value
    digest = hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return "hmac:" + digest.hexdigest()[:16]


class MetricsSink(Protocol):
    def decision(self, mode: str, decision: str, data_class: str) -> None: ...

    def redactions(self, kind: str, count: int) -> None: ...


class CounterSink:
    """Adapts two counters with ``inc(value, tags=...)`` (``ray.serve.metrics.Counter``,
    as named in ``mmo_serving.metrics``) to :class:`MetricsSink`:
    ``mmo_policy_decisions_total{mode,decision,class}`` and
    ``mmo_pii_redactions_total{kind}``."""

    def __init__(self, decisions: Any, redactions: Any) -> None:
        self._decisions = decisions
        self._redactions = redactions

    def decision(self, mode: str, decision: str, data_class: str) -> None:
        self._decisions.inc(1, tags={"mode": mode, "decision": decision, "class": data_class})

    def redactions(self, kind: str, count: int) -> None:
        if count:
            self._redactions.inc(count, tags={"kind": kind})


class AuditLog:
    def __init__(
        self, path: str | None = None, *, enabled: bool = True, stream: IO[str] | None = None
    ) -> None:
        self.enabled = enabled
        self.path = path
        self._stream = stream
        self._lock = threading.Lock()
        self._fd: int | None = None
        if enabled and path:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def write(self, record: Mapping[str, Any]) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        line = {"time": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")}
        line.update(record)
        text = json.dumps(line, sort_keys=False, ensure_ascii=True) + "\n"
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, text.encode("ascii"))
            else:
                out = self._stream if self._stream is not None else sys.stdout
                out.write(text)
                out.flush()
        return line

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class ServingMetricsSink:
    """Counts into :mod:`mmo_serving.metrics` (resolved at first use, inside the replica)."""

    def decision(self, mode: str, decision: str, data_class: str) -> None:
        from mmo_serving.metrics import serving_metrics

        serving_metrics().policy_decision(mode=mode, decision=decision, data_class=data_class)

    def redactions(self, kind: str, count: int) -> None:
        from mmo_serving.metrics import serving_metrics

        serving_metrics().pii_redactions(kind, count)
