"""Audit lines: one per decision, every field, never raw content; counters; contexts."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmo_serving.config import IsolationArgs
from mmo_serving.gateway import (
    AuditLog,
    CounterSink,
    Gateway,
    Local,
    Offloaded,
    RequestInfo,
    Verdict,
)
from mmo_serving.gateway.audit import safe_token
from mmo_serving.gateway.request import payload_sha256

SECRET_TEXT = "the merger with Initech closes friday, call 415-555-2671"


def body(text: str = SECRET_TEXT) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


async def local(b: dict[str, Any], verdict: Local) -> dict[str, Any]:
    return {"ok": f"{verdict.tenant}|{verdict.data_class}"}


@dataclass
class Served:
    """What the front makes of a verdict (the local model stands for the engine)."""

    status: int
    body: dict[str, Any]
    decision: str
    verdict: Verdict


async def serve(
    gw: Gateway,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    local_model: Callable[[dict[str, Any], Local], Awaitable[dict[str, Any]]],
    queue_depth: int = 0,
) -> Served:
    info = RequestInfo("", "/v1/chat/completions", headers, body, queue_depth)
    verdict = await gw.decide(info)
    if isinstance(verdict, Local):
        return Served(200, await local_model(body, verdict), verdict.outcome, verdict)
    if isinstance(verdict, Offloaded):
        return Served(200, verdict.response, "offload", verdict)
    return Served(verdict.status, verdict.body(), "refuse", verdict)


def handle(gw: Gateway, headers: dict[str, str], b: dict[str, Any] | None = None) -> Served:
    return asyncio.run(serve(gw, b or body(), headers, local_model=local))


def test_audit_line_fields_and_no_raw_content() -> None:
    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream))
    res = handle(gw, {"X-Request-Id": "req-42", "X-Tenant": "acme", "X-Data-Class": "public"})
    assert res.status == 200
    line = json.loads(stream.getvalue())
    assert set(line) == {
        "time", "requestId", "tenant", "mode", "route", "class", "declaredClass", "sentClass",
        "decision", "destination", "status", "reason", "payloadSha256", "images", "pii",
        "redactions",
    }  # fmt: skip
    assert line["requestId"] == "req-42" and line["tenant"] == "acme"
    assert (line["class"], line["declaredClass"], line["decision"]) == (
        "sensitive",
        "public",
        "local",
    )
    assert line["pii"] == {"phone": 1} and line["redactions"] == {}
    assert line["payloadSha256"] == payload_sha256(body())
    assert "Initech" not in stream.getvalue() and "555" not in stream.getvalue()


def test_client_supplied_ids_that_are_not_tokens_are_hashed() -> None:
    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream))
    res = handle(gw, {"X-Request-Id": "bob@example.com", "X-Tenant": "Jane Doe, 415-555-2671"})
    line = json.loads(stream.getvalue())
    assert line["requestId"].startswith("sha256:") and line["tenant"].startswith("sha256:")
    assert "example.com" not in stream.getvalue() and "Jane" not in stream.getvalue()
    assert res.status == 200
    assert safe_token("ok-1.2:3", "d") == "ok-1.2:3" and safe_token(None, "d") == "d"


def test_invalid_header_is_refused_with_400_and_audited() -> None:
    stream = io.StringIO()
    sink_calls: list[tuple[str, str, str]] = []

    class Sink:
        def decision(self, mode: str, decision: str, data_class: str) -> None:
            sink_calls.append((mode, decision, data_class))

        def redactions(self, kind: str, count: int) -> None:
            raise AssertionError("nothing is redacted on a refusal")

    gw = Gateway(IsolationArgs(mode="federated"), audit=AuditLog(stream=stream), metrics=Sink())
    res = handle(gw, {"X-Data-Class": "top-secret"})
    assert res.status == 400
    assert res.body["error"]["code"] == "invalid_data_class"
    assert "X-Data-Class" in res.body["error"]["message"]
    assert json.loads(stream.getvalue())["decision"] == "refuse"
    assert sink_calls == [("federated", "refuse", "sensitive")]


def test_audit_to_file_appends_and_disabled_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "decisions.jsonl"
    args = IsolationArgs(audit_path=str(path))
    for _ in range(2):
        gw = Gateway(args)
        handle(gw, {})
        asyncio.run(gw.close())
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["mode"] == "private" for x in lines)
    off = tmp_path / "off.jsonl"
    gw = Gateway(IsolationArgs(audit_enabled=False, audit_path=str(off)))
    handle(gw, {})
    assert not off.exists()


def test_counter_sink_tags() -> None:
    class Counter:
        def __init__(self) -> None:
            self.calls: list[tuple[float, dict[str, str]]] = []

        def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
            self.calls.append((value, tags or {}))

    decisions, redactions = Counter(), Counter()
    gw = Gateway(
        IsolationArgs(), metrics=CounterSink(decisions, redactions), audit=AuditLog(enabled=False)
    )
    handle(gw, {"X-Data-Class": "public"}, body("hello"))
    assert decisions.calls == [(1, {"mode": "private", "decision": "local", "class": "public"})]
    assert redactions.calls == []


def test_local_verdict_scopes_the_cache_by_tenant_and_class() -> None:
    gw = Gateway(IsolationArgs(), audit=AuditLog(enabled=False))
    seen = {
        handle(gw, {"X-Tenant": t, "X-Data-Class": c}, body("same text")).body["ok"]
        for t in ["a", "b"]
        for c in ["public", "internal", "sensitive"]
    }
    assert seen == {f"{t}|{c}" for t in ["a", "b"] for c in ["public", "internal", "sensitive"]}
