"""The ingress seam: load_gateway finds build_gateway, and decide() maps every outcome."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from mmo_serving.config import AppArgs, HybridArgs, IsolationArgs
from mmo_serving.gateway import AuditLog, Gateway
from mmo_serving.gateway.cloud import CloudClient
from mmo_serving.gateway.ingress import IngressGateway, cloud_route
from mmo_serving.gateway_types import RequestInfo, load_gateway


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def decision(self, mode: str, decision: str, data_class: str) -> None:
        self.calls.append((mode, decision, data_class))

    def redactions(self, kind: str, count: int) -> None:
        pass


def info(text: str, headers: dict[str, str], queue: int = 0) -> RequestInfo:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return RequestInfo(
        request_id="r1",
        route="/v1/chat/completions",
        tenant="t1",
        headers={k.lower(): v for k, v in headers.items()},
        texts=[text],
        image_urls=[],
        body=body,
        queue_depth=queue,
    )


def test_load_gateway_uses_build_gateway() -> None:
    gw = load_gateway(AppArgs(name="m", model_source="builtin://shapes-moe"))
    assert isinstance(gw, IngressGateway)
    assert gw.gateway.args.mode == "private"


def test_cloud_route() -> None:
    assert cloud_route("/v1/chat/completions") == "chat/completions"
    assert cloud_route("/v1/embeddings") == "embeddings"


def test_decide_maps_local_refuse_offload_and_fallback() -> None:
    sent: list[dict[str, Any]] = []
    status = [200]

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        assert request.url.path == "/v1/chat/completions"
        return httpx.Response(status[0], json={"object": "chat.completion", "choices": []})

    hy = HybridArgs(endpoint="https://cloud.example.com/v1", retries=0, credentials_env="K")
    sink = Sink()
    cloud = CloudClient(hy, env={"K": "x"}, transport=httpx.MockTransport(handler), cooldown_s=0)
    gw = IngressGateway(
        Gateway(
            IsolationArgs(mode="hybrid", hybrid=hy),
            metrics=sink,
            audit=AuditLog(enabled=False),
            cloud=cloud,
        )
    )

    async def main() -> None:
        d = await gw.decide(info("hello", {"X-Data-Class": "internal"}))
        assert (d.action, d.data_class, d.reason) == ("local", "internal", "local")
        d = await gw.decide(info("hello", {"X-Route": "nowhere"}))
        assert (d.action, d.status) == ("refuse", 400) and "X-Route" in d.reason
        d = await gw.decide(info("mail a.b@example.com", {"X-Data-Class": "public"}, queue=99))
        assert d.action == "offload" and d.response == {"object": "chat.completion", "choices": []}
        assert "a.b@example.com" not in json.dumps(sent) and "[EMAIL]" in json.dumps(sent)
        status[0] = 503
        d = await gw.decide(info("hello", {"X-Data-Class": "public", "X-Route": "cloud"}))
        assert (d.action, d.data_class, d.reason) == ("local", "public", "fallback")
        await gw.close()

    asyncio.run(main())
    assert [c[1] for c in sink.calls] == ["local", "refuse", "offload", "fallback"]


def test_offloaded_embeddings_are_rebuilt_from_the_schema() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        assert request.url.path == "/v1/embeddings"
        return httpx.Response(200, json={"object": "list", "data": []})

    hy = HybridArgs(endpoint="https://cloud.example.com/v1", retries=0, credentials_env="K")
    cloud = CloudClient(hy, env={"K": "x"}, transport=httpx.MockTransport(handler))
    gw = IngressGateway(
        Gateway(IsolationArgs(mode="hybrid", hybrid=hy), audit=AuditLog(enabled=False), cloud=cloud)
    )
    body = {
        "model": "m",
        "input": ["hello", "call 02079460958"],
        "user": "alice@example.com",
        "dimensions": 3,
        "extra": {"bob@example.com": "4111 1111 1111 1111"},
    }
    request = RequestInfo(
        request_id="r2",
        route="/v1/embeddings",
        tenant="t1",
        headers={"x-data-class": "public", "x-route": "cloud"},
        texts=["hello", "call 02079460958"],
        image_urls=[],
        body=body,
        queue_depth=0,
    )

    async def main() -> None:
        d = await gw.decide(request)
        assert d.action == "offload"
        await gw.close()

    asyncio.run(main())
    assert sent == [{"model": "m", "input": ["hello", "call [PHONE]"], "encoding_format": "float"}]
