"""The real Serve app with the real gateway (``mmo_serving.gateway.build_gateway``), real HTTP,
and a fake OpenAI-compatible cloud endpoint on loopback that records what it receives.

Two applications on one private Ray: a hybrid one (offload to the fake endpoint) and a
private one (same endpoint configured nowhere: it must receive nothing from it).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

from mmo_serving.builtin_engine import BuiltinEngineFactory
from mmo_serving.config import AppArgs
from mmo_serving.engine.types import (
    EmbeddingRequest,
    ExpertLoad,
    GenerationRequest,
    GenerationResult,
)
from ports import free_port

MODEL = "shapes"
KEY_ENV = "MMO_GW_TEST_KEY"
MAX_BODY = 65536
PII = ["noor.haddad@example.net", "4000 0566 5566 5556", "NL91 ABNA 0417 1643 00", "10.77.1.2"]


class TinyEngine:
    def __init__(self, args: AppArgs) -> None:
        self.args = args

    async def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        if any("BOOM" in item.text for item in items):
            raise RuntimeError("the engine failed")
        return [GenerationResult(text="local answer", tokens=2) for _ in items]

    async def embed(self, items: list[EmbeddingRequest]) -> list[list[float]]:
        return [[0.0, 1.0] for _ in items]

    async def expert_load(self) -> ExpertLoad:
        return ExpertLoad(num_layers=1, num_experts=1, num_ranks=1, tokens=[[[0]]], window=[[[0]]])

    async def update_plan(self, plan: Any) -> None:
        pass

    async def close(self) -> None:
        pass


def make_engine(args: AppArgs) -> TinyEngine:
    return TinyEngine(args)


class Cloud:
    """A fake cloud endpoint (stdlib HTTP server in a thread) recording every request."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.fail = False
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                cloud.received.append(body)
                status = 500 if cloud.fail else 200
                answer = {
                    "id": "chatcmpl-cloud",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "cloud-model",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "cloud answer"},
                            "finish_reason": "stop",
                        }
                    ],
                }
                data = json.dumps(answer if status == 200 else {"error": "down"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def text(self) -> str:
        return "\n".join(b.decode() for b in self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Env:
    def __init__(self, url: str, cloud: Cloud, audit: dict[str, Path]) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.cloud = cloud
        self.audit = audit

    def chat(self, app: str, text: str, headers: dict[str, str], **extra: Any) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}
        return self.http.post(f"/{app}/v1/chat/completions", json=body, headers=headers)

    def audit_lines(self, app: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.audit[app].read_text().splitlines()]


def _args(mode: str, cloud_url: str, audit: Path) -> dict[str, Any]:
    isolation: dict[str, Any] = {"mode": mode, "auditPath": str(audit)}
    if mode == "hybrid":
        isolation["hybrid"] = {
            "endpoint": cloud_url,
            "offloadDataClasses": ["public"],
            "redactPii": True,
            "credentialsEnv": KEY_ENV,
            "timeoutS": 2,
            "retries": 0,
            "queueThreshold": 1000,
        }
    return {
        "name": MODEL,
        "modelSource": "builtin://shapes-moe",
        "numGpus": 1,
        "cache": {"enabled": True, "maxEntries": 16, "ttlSeconds": 600},
        "isolation": isolation,
        "maxRequestBytes": MAX_BODY,
    }


@pytest.fixture(scope="module")
def env(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from ray import cloudpickle

    from mmo_serving.app import build_app

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloud = Cloud()
    tmp = tmp_path_factory.mktemp("audit")
    audit = {"hybrid": tmp / "hybrid.jsonl", "private": tmp / "private.jsonl"}
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        actor = {"num_cpus": 0.1, "num_gpus": 1, "runtime_env": {"env_vars": {KEY_ENV: "sk-t"}}}
        for app in ("hybrid", "private"):
            built = build_app(
                _args(app, cloud.url, audit[app]),
                engine_factory=BuiltinEngineFactory(make_engine),
                options={"ray_actor_options": actor},
            )
            serve.run(built, name=app, route_prefix=f"/{app}")
        yield Env(f"http://127.0.0.1:{port}", cloud, audit)
    finally:
        try:
            serve.shutdown()  # the session's Ray (ray_cluster) stays up for the next module
        finally:
            cloud.close()


def _content(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def test_hybrid_offloads_public_with_pii_redacted(env: Env) -> None:
    before = len(env.cloud.received)
    text = "summarise: customer " + " / ".join(PII)
    resp = env.chat("hybrid", text, {"X-Data-Class": "public", "X-Route": "cloud"})
    assert _content(resp) == "cloud answer"
    assert resp.headers["x-mmo-cache"] == "offload"
    sent = env.cloud.received[before:]
    assert len(sent) == 1
    for value in PII:
        assert value not in env.cloud.text()
    assert "[EMAIL]" in sent[0].decode() and "[CARD]" in sent[0].decode()


def test_hybrid_offload_forwards_only_the_fields_the_schema_knows(env: Env) -> None:
    before = len(env.cloud.received)
    message = {
        "role": "user",
        "content": "hello there",
        "model": "bob@example.com",
        "name": "erin@example.com",
    }
    body = {
        "model": MODEL,
        "messages": [message],
        "max_tokens": 7,
        "user": "carol@example.com",
        "seed": 3,
        "metadata": {"type": "4111 1111 1111 1111", "alice@example.com": "x"},
    }
    headers = {"X-Data-Class": "public", "X-Route": "cloud", "X-Request-Id": "extra-fields-1"}
    resp = env.http.post("/hybrid/v1/chat/completions", json=body, headers=headers)
    assert _content(resp) == "cloud answer"
    assert [json.loads(b) for b in env.cloud.received[before:]] == [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 7,
            "stream": False,
        }
    ]
    # the gateway is handed the validated request, not the raw JSON: fields that the
    # schema ignores are no part of the request (nor of its classification)
    line = [x for x in env.audit_lines("hybrid") if x["requestId"] == "extra-fields-1"][-1]
    assert (line["decision"], line["class"], line["pii"]) == ("offload", "public", {})


def test_hybrid_keeps_sensitive_internal_and_queue_below_threshold_local(env: Env) -> None:
    before = len(env.cloud.received)
    for headers in (
        {"X-Data-Class": "sensitive", "X-Route": "cloud"},
        {"X-Data-Class": "internal", "X-Route": "cloud"},
        {"X-Data-Class": "public"},  # auto route, queue far below the threshold
        {"X-Data-Class": "public", "X-Route": "local"},
    ):
        assert _content(env.chat("hybrid", "what is 2+2", headers)) == "local answer"
    assert env.cloud.received[before:] == []


def test_hybrid_stream_of_an_offloaded_answer(env: Env) -> None:
    resp = env.chat("hybrid", "hello", {"X-Data-Class": "public", "X-Route": "cloud"}, stream=True)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert "cloud" in resp.text and resp.text.rstrip().endswith("data: [DONE]")


def test_hybrid_endpoint_down_serves_locally(env: Env) -> None:
    env.cloud.fail = True
    try:
        resp = env.chat("hybrid", "hi there", {"X-Data-Class": "public", "X-Route": "cloud"})
    finally:
        env.cloud.fail = False
    assert _content(resp) == "local answer"
    last = env.audit_lines("hybrid")[-1]
    assert last["decision"] == "fallback" and "HTTP 500" in last["reason"]
    # the body did reach the endpoint before it failed: the line says so
    assert (last["sent"], last["destination"], last["answeredBy"]) == (True, env.cloud.url, "local")


def test_private_sends_nothing_and_refuses_cloud_and_remote_images(env: Env) -> None:
    before = len(env.cloud.received)
    assert _content(env.chat("private", "hello " + PII[0], {"X-Data-Class": "public"})) == (
        "local answer"
    )
    resp = env.chat("private", "hello", {"X-Route": "cloud"})
    assert resp.status_code == 403
    assert "mode private has no cloud endpoint" in resp.json()["error"]["message"]
    remote = [
        {"type": "text", "text": "what colour?"},
        {"type": "image_url", "image_url": {"url": "https://images.example.com/cat.png"}},
    ]
    body = {"model": MODEL, "messages": [{"role": "user", "content": remote}]}
    resp = env.http.post("/private/v1/chat/completions", json=body)
    assert resp.status_code == 403
    err = resp.json()["error"]
    assert err["code"] == "remote_image_refused" and err["type"] == "policy_error"
    assert err["message"].startswith("remote image URLs are not fetched")
    assert "send the image inline as a data: URL" in err["message"]
    assert env.cloud.received[before:] == []


def test_audit_lines_have_no_raw_content(env: Env) -> None:
    for app in ("hybrid", "private"):
        raw = env.audit[app].read_text()
        assert raw.strip()
        for value in PII:
            assert value not in raw
        assert "summarise" not in raw and "what is 2+2" not in raw
        for line in env.audit_lines(app):
            assert line["mode"] == app and line["digestKey"] == "replica"
            assert line["payloadHmac"] is None or len(line["payloadHmac"]) == 64


def _chat_raw(text: str) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()


PATHS: list[tuple[str, bytes, list[tuple[str, str]], int, str]] = [
    # (request id, raw body, extra headers, status, error code or "")
    ("path-ok", _chat_raw("hello"), [], 200, ""),
    ("path-bad-json", b"{not json", [], 400, "invalid_json"),
    ("path-schema", json.dumps({"model": MODEL}).encode(), [], 400, "invalid_schema"),
    ("path-model", json.dumps({"model": "nope", "messages": []}).encode(), [], 400, ""),
    ("path-unknown-model", _chat_raw("hi").replace(MODEL.encode(), b"other"), [], 404,
     "model_not_found"),
    ("path-too-big", _chat_raw("x" * MAX_BODY), [], 413, "request_too_large"),
    ("path-surrogate", _chat_raw("a").replace(b'"a"', b'"\\ud800"'), [], 400, "invalid_json"),
    ("path-deep", b"[" * 20_000 + b"]" * 20_000, [], 400, "invalid_json"),
    ("path-dup-class", _chat_raw("hi"), [("X-Data-Class", "public"), ("X-Data-Class", "sensitive")],
     400, "invalid_data_class"),
    ("path-dup-route", _chat_raw("hi"), [("X-Route", "local"), ("x-route", "cloud")], 400,
     "invalid_route"),
    ("path-engine-500", _chat_raw("BOOM"), [], 500, "internal_error"),
]  # fmt: skip


# (request id, method, path under the app, status, error code): no route, wrong method
UNROUTED = [
    ("path-404", "GET", "/v1/chat/completion", 404, "unknown_route"),
    ("path-404-pii", "POST", "/v1/noor.haddad@example.net", 404, "unknown_route"),
    ("path-405", "GET", "/v1/embeddings", 405, "method_not_allowed"),
]


def test_every_path_writes_exactly_one_audit_line(env: Env) -> None:
    for rid, raw, extra, status, code in PATHS:
        headers = [("Content-Type", "application/json"), ("X-Request-Id", rid), *extra]
        resp = env.http.post("/private/v1/chat/completions", content=raw, headers=headers)
        assert resp.status_code == status, (rid, resp.text)
        if code:
            assert resp.json()["error"]["code"] == code, rid
        if code == "request_too_large":
            assert f"limit of {MAX_BODY} bytes" in resp.json()["error"]["message"]
    for rid, method, path, status, code in UNROUTED:
        resp = env.http.request(method, f"/private{path}", headers={"X-Request-Id": rid})
        assert resp.status_code == status and resp.json()["error"]["code"] == code, rid
    lines = env.audit_lines("private")
    for rid, _, _, status, code in [*PATHS, *[(r, b"", [], s, c) for r, _, _, s, c in UNROUTED]]:
        mine = [x for x in lines if x["requestId"] == rid]
        assert len(mine) == 1, (rid, mine)
        # an engine failure after the gateway's verdict is that verdict's line, failed
        assert mine[0]["status"] == status, rid
        assert mine[0]["error"] == (code or None) or status == 400, (rid, mine[0])
    (failed,) = [x for x in lines if x["requestId"] == "path-engine-500"]
    assert (failed["decision"], failed["answeredBy"]) == ("local", "none")
    unrouted = {x["requestId"]: x for x in lines if x["requestId"].startswith("path-40")}
    assert unrouted["path-405"]["route"] == "embeddings"
    assert unrouted["path-404-pii"]["route"] == "unknown"
    assert "noor.haddad" not in env.audit["private"].read_text()
