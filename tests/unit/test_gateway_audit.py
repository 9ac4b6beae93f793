"""Audit lines: one per decision, every field, never raw content; counters; contexts."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

from gateway_front import Served, serve

from mmo_serving.config import IsolationArgs
from mmo_serving.gateway import (
    AuditLog,
    CounterSink,
    Gateway,
    Local,
    RequestInfo,
    pii,
)
from mmo_serving.gateway.audit import AuditKey, audit_key, safe_token
from mmo_serving.gateway.request import payload_hmac

KEY = AuditKey(b"deployment-key", "deployment")

SECRET_TEXT = "the merger with Initech closes friday, call 415-555-2671"


def body(text: str = SECRET_TEXT) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


async def local(b: dict[str, Any], verdict: Local) -> dict[str, Any]:
    return {"ok": f"{verdict.tenant}|{verdict.data_class}"}


def handle(gw: Gateway, headers: dict[str, str], b: dict[str, Any] | None = None) -> Served:
    return asyncio.run(serve(gw, b or body(), headers, local_model=local))


def test_audit_line_fields_and_no_raw_content() -> None:
    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream), key=KEY)
    res = handle(gw, {"X-Request-Id": "req-42", "X-Tenant": "acme", "X-Data-Class": "public"})
    assert res.status == 200
    line = json.loads(stream.getvalue())
    assert set(line) == {
        "time", "requestId", "tenant", "mode", "route", "class", "declaredClass", "decision",
        "sent", "destination", "sentClass", "answeredBy", "status", "error", "reason",
        "payloadHmac", "digestKey", "images", "pii", "redactions",
    }  # fmt: skip
    assert line["status"] == 200 and line["error"] is None
    assert line["requestId"] == "req-42" and line["tenant"] == "acme"
    assert (line["class"], line["declaredClass"], line["decision"]) == (
        "sensitive",
        "public",
        "local",
    )
    assert line["pii"] == {"phone": 1} and line["redactions"] == {}
    assert (line["sent"], line["destination"], line["answeredBy"]) == (False, "local", "local")
    assert line["payloadHmac"] == payload_hmac(body(), KEY.secret)
    assert line["digestKey"] == "deployment"
    assert "Initech" not in stream.getvalue() and "555" not in stream.getvalue()


def test_client_supplied_ids_that_are_not_tokens_are_hashed() -> None:
    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream), key=KEY)
    res = handle(gw, {"X-Request-Id": "bob@example.com", "X-Tenant": "Jane Doe, 415-555-2671"})
    line = json.loads(stream.getvalue())
    assert line["requestId"].startswith("hmac:") and line["tenant"].startswith("hmac:")
    assert "example.com" not in stream.getvalue() and "Jane" not in stream.getvalue()
    assert res.status == 200
    assert safe_token("ok-1.2:3", "d", KEY.secret) == "ok-1.2:3"
    assert safe_token(None, "d", KEY.secret) == "d"


def test_token_shaped_ids_holding_pii_are_hashed_too() -> None:
    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream), key=KEY)
    handle(gw, {"X-Request-Id": "10.20.30.40", "X-Tenant": "4111111111111111"})
    line = json.loads(stream.getvalue())
    assert line["requestId"].startswith("hmac:") and line["tenant"].startswith("hmac:")
    assert "10.20.30.40" not in stream.getvalue() and "4111" not in stream.getvalue()


def test_digests_are_keyed_so_a_guess_cannot_be_confirmed() -> None:
    import hashlib

    lines = []
    for key in [KEY, KEY, AuditKey(b"another-deployment", "deployment")]:
        stream = io.StringIO()
        gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream), key=key)
        handle(gw, {"X-Tenant": "Jane Doe"})
        lines.append(json.loads(stream.getvalue()))
    assert lines[0]["payloadHmac"] == lines[1]["payloadHmac"]  # same key: requests match
    assert lines[0]["tenant"] == lines[1]["tenant"]
    assert lines[0]["payloadHmac"] != lines[2]["payloadHmac"]
    assert lines[0]["tenant"] != lines[2]["tenant"]
    # the unkeyed digest of the guessed body (what the trail used to hold) is not there
    canon = json.dumps(body(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    guess = hashlib.sha256(canon.encode()).hexdigest()
    assert guess not in json.dumps(lines)
    assert hashlib.sha256(b"Jane Doe").hexdigest()[:16] not in json.dumps(lines)


def test_audit_key_comes_from_the_environment_or_is_random_per_replica() -> None:
    assert audit_key({"MMO_AUDIT_KEY": "s3cret"}) == AuditKey(b"s3cret", "deployment")
    a, b = audit_key({}), audit_key({})
    assert a.scope == b.scope == "replica" and a.secret != b.secret and len(a.secret) == 32
    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream), key=a)
    handle(gw, {})
    assert json.loads(stream.getvalue())["digestKey"] == "replica"


def test_request_rejected_before_the_gateway_still_writes_one_line() -> None:
    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream), key=KEY)
    headers = [("X-Tenant", "Jane Doe"), ("X-Data-Class", "public")]
    gw.record_rejected("r-1", headers, "/v1/embeddings", 413, "request_too_large")
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert (line["requestId"], line["route"], line["decision"]) == ("r-1", "embeddings", "rejected")
    assert (line["status"], line["sent"], line["destination"]) == (413, False, "none")
    assert line["answeredBy"] == "none" and line["payloadHmac"] is None
    assert line["error"] == "request_too_large" and "request_too_large" in line["reason"]
    assert "Jane" not in stream.getvalue()
    assert pii.count(stream.getvalue()) == {}


def test_engine_failure_after_the_verdict_is_one_line_that_says_it_failed() -> None:
    async def broken(b: dict[str, Any], verdict: Local) -> dict[str, Any]:
        raise RuntimeError("the engine failed")

    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream), key=KEY)
    res = asyncio.run(serve(gw, body(), {"X-Request-Id": "r-9"}, local_model=broken))
    assert res.status == 500
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert (line["requestId"], line["decision"], line["status"]) == ("r-9", "local", 500)
    assert (line["error"], line["answeredBy"]) == ("internal_error", "none")
    assert line["reason"].endswith("; then failed: HTTP 500 (internal_error)")


def test_a_verdict_that_lets_the_request_go_on_writes_its_line_only_when_served() -> None:
    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream), key=KEY)
    verdict = asyncio.run(gw.decide(RequestInfo("r-1", "/v1/chat/completions", {}, body(), 0)))
    assert isinstance(verdict, Local) and stream.getvalue() == ""
    gw.served(verdict, 200)
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert (line["status"], line["error"], line["answeredBy"]) == (200, None, "local")


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
    assert res.body["error"]["message"] == (
        "header X-Data-Class: unknown value (length 10); allowed: public, internal, sensitive"
    )
    assert res.body["error"]["code"] == "invalid_data_class"
    assert "X-Data-Class" in res.body["error"]["message"]
    line = json.loads(stream.getvalue())
    assert (line["decision"], line["status"], line["error"]) == (
        "refuse",
        400,
        "invalid_data_class",
    )
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
