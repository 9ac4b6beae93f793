"""Gateway.decide: one typed verdict per request, and one parser for the caller's headers."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import pytest

from mmo_serving.config import AppArgs, HybridArgs, IsolationArgs
from mmo_serving.gateway import (
    AuditLog,
    Gateway,
    Local,
    Offloaded,
    Refused,
    RequestInfo,
    ServingMetricsSink,
    build_gateway,
)
from mmo_serving.gateway.cloud import CloudClient
from mmo_serving.gateway.core import cloud_route
from mmo_serving.gateway.headers import CallerHeaders, HeaderError, parse_headers


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def decision(self, mode: str, decision: str, data_class: str) -> None:
        self.calls.append((mode, decision, data_class))

    def redactions(self, kind: str, count: int) -> None:
        pass


def info(text: str, headers: dict[str, str], queue: int = 0) -> RequestInfo:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return RequestInfo("r1", "/v1/chat/completions", headers, body, queue)


def test_build_gateway_counts_into_the_serving_metrics() -> None:
    gw = build_gateway(AppArgs(name="m", model_source="builtin://shapes-moe"))
    assert isinstance(gw, Gateway) and isinstance(gw.metrics, ServingMetricsSink)
    assert gw.args.mode == "private"


def test_cloud_route() -> None:
    assert cloud_route("/v1/chat/completions") == "chat/completions"
    assert cloud_route("/v1/embeddings") == "embeddings"


def test_headers_parsed_in_one_place() -> None:
    got = parse_headers({"x-data-class": " Public ", "X-ROUTE": "Cloud", "X-Tenant": "acme"})
    assert got == CallerHeaders("public", "cloud", "acme")
    assert parse_headers({}) == CallerHeaders(None, "auto", "default")
    assert parse_headers({"X-Route": ""}).route == "auto"


@pytest.mark.parametrize(
    ("headers", "code", "message"),
    [
        ({"X-Data-Class": "secret"}, "invalid_data_class", "header X-Data-Class: unknown value"),
        ({"X-Route": "nowhere"}, "invalid_route", "allowed: auto, local, cloud"),
        ({"X-Tenant": ""}, "invalid_tenant", "header X-Tenant: must be 1 to 64 characters"),
        ({"X-Tenant": "t" * 65}, "invalid_tenant", "got 65"),
    ],
)
def test_each_bad_header_has_its_code(headers: dict[str, str], code: str, message: str) -> None:
    with pytest.raises(HeaderError) as err:
        parse_headers(headers)
    assert err.value.code == code and message in err.value.message
    gw = Gateway(IsolationArgs(), audit=AuditLog(enabled=False))
    verdict = asyncio.run(gw.decide(info("hello", headers)))
    assert isinstance(verdict, Refused)
    assert (verdict.status, verdict.code, verdict.error_type) == (
        400,
        code,
        "invalid_request_error",
    )
    assert verdict.param == next(iter(headers)) and message in verdict.message


def test_a_rejected_value_is_never_echoed() -> None:
    with pytest.raises(HeaderError) as err:
        parse_headers({"X-Data-Class": "bob@example.com"})
    assert "bob" not in err.value.message and "length 15" in err.value.message


def test_remote_image_refusal_says_to_send_it_inline() -> None:
    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream))
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
            }
        ],
    }
    verdict = asyncio.run(gw.decide(RequestInfo("r", "/v1/chat/completions", {}, body, 0)))
    assert isinstance(verdict, Refused)
    assert (verdict.status, verdict.code, verdict.error_type) == (
        403,
        "remote_image_refused",
        "policy_error",
    )
    assert verdict.message.startswith("remote image URLs are not fetched")
    assert "send the image inline as a data: URL" in verdict.message
    assert json.loads(stream.getvalue())["decision"] == "refuse"


REPLY = {"object": "chat.completion", "choices": [{"message": {"content": "hi"}}]}


def test_decide_answers_local_refused_offloaded_and_fallback() -> None:
    sent: list[dict[str, Any]] = []
    status = [200]

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        assert request.url.path == "/v1/chat/completions"
        return httpx.Response(status[0], json=REPLY)

    hy = HybridArgs(endpoint="https://cloud.example.com/v1", retries=0, credentials_env="K")
    sink = Sink()
    cloud = CloudClient(hy, env={"K": "x"}, transport=httpx.MockTransport(handler), cooldown_s=0)
    gw = Gateway(
        IsolationArgs(mode="hybrid", hybrid=hy),
        metrics=sink,
        audit=AuditLog(enabled=False),
        cloud=cloud,
    )

    async def main() -> None:
        v = await gw.decide(info("hello", {"X-Data-Class": "internal", "X-Tenant": "t1"}))
        assert v == Local("internal", "t1", "local")
        v = await gw.decide(info("hello", {"X-Route": "nowhere"}))
        assert isinstance(v, Refused) and v.status == 400 and "X-Route" in v.message
        v = await gw.decide(info("mail a.b@example.com", {"X-Data-Class": "public"}, queue=99))
        assert v == Offloaded("public", "default", REPLY)
        assert "a.b@example.com" not in json.dumps(sent) and "[EMAIL]" in json.dumps(sent)
        status[0] = 503
        v = await gw.decide(info("hello", {"X-Data-Class": "public", "X-Route": "cloud"}))
        assert v == Local("public", "default", "fallback")
        await gw.close()

    asyncio.run(main())
    assert [c[1] for c in sink.calls] == ["local", "refuse", "offload", "fallback"]


def test_offloaded_embeddings_are_rebuilt_from_the_schema() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        assert request.url.path == "/v1/embeddings"
        return httpx.Response(200, json={"object": "list", "data": [{"embedding": [0.5]}]})

    hy = HybridArgs(endpoint="https://cloud.example.com/v1", retries=0, credentials_env="K")
    cloud = CloudClient(hy, env={"K": "x"}, transport=httpx.MockTransport(handler))
    gw = Gateway(
        IsolationArgs(mode="hybrid", hybrid=hy), audit=AuditLog(enabled=False), cloud=cloud
    )
    body = {
        "model": "m",
        "input": ["hello", "call 02079460958"],
        "user": "alice@example.com",
        "dimensions": 3,
        "extra": {"bob@example.com": "4111 1111 1111 1111"},
    }
    headers = {"x-data-class": "public", "x-route": "cloud"}
    request = RequestInfo("r2", "/v1/embeddings", headers, body, 0)

    async def main() -> None:
        v = await gw.decide(request)
        assert isinstance(v, Offloaded)
        await gw.close()

    asyncio.run(main())
    assert sent == [{"model": "m", "input": ["hello", "call [PHONE]"], "encoding_format": "float"}]


@pytest.mark.parametrize(
    "name,code",
    [("X-Data-Class", "invalid_data_class"), ("X-Route", "invalid_route"),
     ("X-Tenant", "invalid_tenant")],
)  # fmt: skip
def test_a_repeated_header_is_refused_not_last_one_wins(name: str, code: str) -> None:
    pairs = [(name, "public" if name == "X-Data-Class" else "local"), (name.lower(), "cloud")]
    with pytest.raises(HeaderError) as exc:
        parse_headers(pairs)
    assert (exc.value.code, exc.value.message) == (
        code,
        f"header {name}: sent 2 times; send it once",
    )
    stream = io.StringIO()
    gw = Gateway(IsolationArgs(), audit=AuditLog(stream=stream))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    verdict = asyncio.run(gw.decide(RequestInfo("r", "/v1/chat/completions", pairs, body, 0)))
    assert isinstance(verdict, Refused) and (verdict.status, verdict.code) == (400, code)
    assert verdict.param == name
    assert json.loads(stream.getvalue())["status"] == 400
    # the same header once, as pairs, is fine
    assert parse_headers([("X-Data-Class", "public"), ("X-Route", "local")]).route == "local"


def test_a_slow_scan_does_not_hold_a_concurrent_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PII scan runs in a worker thread: while one request's scan is stuck, another
    request is decided. On the event loop the stuck scan would hold every request."""
    import threading

    from mmo_serving.gateway import pii

    started, release = threading.Event(), threading.Event()
    released_by_other: list[bool] = []
    real = pii.count_parts

    def stuck_on_slow(parts: Any) -> Any:
        if any("SLOW" in p for p in parts):
            started.set()
            released_by_other.append(release.wait(timeout=30))
        return real(parts)

    monkeypatch.setattr(pii, "count_parts", stuck_on_slow)
    gw = Gateway(IsolationArgs(), audit=AuditLog(enabled=False))
    order: list[str] = []

    async def one(text: str) -> None:
        await gw.decide(info(text, {}))
        order.append(text)

    async def main() -> None:
        slow = asyncio.create_task(one("SLOW scan"))
        while not started.is_set():
            await asyncio.sleep(0.01)
        await one("fast")
        release.set()
        await slow

    asyncio.run(main())
    assert order == ["fast", "SLOW scan"]
    assert released_by_other == [True]  # the fast request finished while the scan was stuck
