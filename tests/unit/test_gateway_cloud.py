"""The gateway against a fake OpenAI-compatible endpoint on loopback that records all it gets."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import ssl
import subprocess
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from gateway_front import serve as serve_request

from mmo_serving.config import HybridArgs, IsolationArgs
from mmo_serving.gateway import AuditLog, Gateway, Local
from mmo_serving.gateway.cloud import CloudClient, CloudError, check_endpoint

KEY_ENV = "MMO_TEST_CLOUD_KEY"
PNG = "data:image/png;base64,iVBORw0KGgo="
PII_VALUES = [
    "olivia.martin@example.org",
    "+49 30 901820 55",
    "5105 1051 0510 5100",
    "440308199901010012",
    "GB82 WEST 1234 5698 7654 32",
    "172.16.254.7",
    "2001:db8:abcd::42",
]


@dataclass
class FakeCloud:
    """Answers like an OpenAI chat endpoint; ``mode`` = ok | fail | slow | flaky."""

    mode: str = "ok"
    received: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    async def handler(self, request: Any) -> Any:
        raw = await request.read()
        self.raw.append(raw)
        self.received.append(json.loads(raw))
        self.auth.append(request.headers.get("Authorization", ""))
        self.paths.append(request.path)
        if self.mode == "fail" or (self.mode == "flaky" and len(self.raw) == 1):
            return web.json_response({"error": "boom"}, status=500)
        if self.mode == "slow":
            await asyncio.sleep(2)
        if self.mode in BROKEN_REPLIES:
            return BROKEN_REPLIES[self.mode]()
        return web.json_response(
            {"object": "chat.completion", "choices": [{"message": {"content": "from cloud"}}]}
        )


BROKEN_REPLIES: dict[str, Callable[[], Any]] = {
    "redirect": lambda: web.Response(status=302, headers={"Location": "https://x.test/"}),
    "bad_request": lambda: web.json_response({"error": "no"}, status=400),
    "not_json": lambda: web.Response(text="<html>busy</html>", content_type="text/html"),
    "bad_encoding": lambda: web.Response(
        body=b"this is not gzip",
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    ),
    "deep": lambda: web.Response(
        body=b"[" * 200_000 + b"]" * 200_000, content_type="application/json"
    ),
    "no_choices": lambda: web.json_response({"object": "chat.completion"}),
}


@asynccontextmanager
async def serve(fake: FakeCloud, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", fake.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


class LocalModel:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], Local]] = []

    async def __call__(self, body: dict[str, Any], ctx: Local) -> dict[str, Any]:
        self.calls.append((body, ctx))
        return {"object": "chat.completion", "choices": [{"message": {"content": "local"}}]}


class Sink:
    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, str]] = []
        self.redacted: dict[str, int] = {}

    def decision(self, mode: str, decision: str, data_class: str) -> None:
        self.decisions.append((mode, decision, data_class))

    def redactions(self, kind: str, count: int) -> None:
        self.redacted[kind] = self.redacted.get(kind, 0) + count


def chat(text: str, image: str | None = None) -> dict[str, Any]:
    content: Any = text
    if image:
        content = [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image}},
        ]
    return {"model": "shapes", "user": "u-1", "messages": [{"role": "user", "content": content}]}


def make_gateway(
    endpoint: str, mode: str = "hybrid", **hybrid: Any
) -> tuple[Gateway, io.StringIO, Sink]:
    opts: dict[str, Any] = {
        "endpoint": endpoint,
        "credentials_env": KEY_ENV,
        "timeout_s": 0.5,
        "retries": 1,
        "queue_threshold": 2,
        **hybrid,
    }
    hy = HybridArgs(**opts)
    args = IsolationArgs(mode=mode, hybrid=hy if mode == "hybrid" else None)  # type: ignore[arg-type]
    stream = io.StringIO()
    sink = Sink()
    cloud = CloudClient(hy, env={KEY_ENV: "sk-test"}, backoff_s=0.0, cooldown_s=0.0)
    return Gateway(args, metrics=sink, audit=AuditLog(stream=stream), cloud=cloud), stream, sink


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def mixed_traffic() -> list[tuple[dict[str, str], dict[str, Any], int, bool]]:
    """(headers, body, queue depth, may leave) for a mix of classes, PII, images, routes."""
    out = []
    n = 0
    for cls in ["public", "internal", "sensitive", None]:
        for pii_value in [None, *PII_VALUES]:
            for route, queue in [("cloud", 0), ("auto", 10), ("auto", 0), ("local", 10)]:
                for image in [None, PNG]:
                    n += 1
                    text = f"REQ{n:04d} describe the picture"
                    if pii_value:
                        text += f" and write to {pii_value}"
                    headers = {"X-Route": route}
                    if cls:
                        headers["X-Data-Class"] = cls
                    declared = cls or "internal"
                    asks = route == "cloud" or (route == "auto" and queue > 2)
                    may_leave = declared == "public" and image is None and asks
                    out.append((headers, chat(text, image), queue, may_leave))
    return out


def test_mixed_traffic_never_sends_sensitive_or_raw_pii() -> None:
    async def main() -> None:
        fake = FakeCloud()
        async with serve(fake) as endpoint:
            gw, audit, sink = make_gateway(endpoint)
            local = LocalModel()
            traffic = mixed_traffic()
            results = []
            for headers, body, queue, _ in traffic:
                results.append(
                    await serve_request(gw, body, headers, local_model=local, queue_depth=queue)
                )
            await gw.close()
        sent = "\n".join(r.decode() for r in fake.raw)
        for value in PII_VALUES:
            assert value not in sent
            assert value.replace(" ", "") not in sent.replace(" ", "")
        leaving = {b["messages"][0]["content"][:7] for _, b, _, ok in traffic if ok}
        for body in fake.received:
            content = body["messages"][0]["content"]
            assert isinstance(content, str), "no image ever leaves (images are sensitive)"
            assert content[:7] in leaving, f"{content[:7]} should not have left"
            assert "user" not in body and body["stream"] is False
        # what may leave did leave (so the assertions above are not vacuous), redacted
        assert len(fake.received) == len(leaving)
        assert sum("[EMAIL]" in json.dumps(b) for b in fake.received) == 2
        assert all(a == "Bearer sk-test" for a in fake.auth)
        assert set(fake.paths) == {"/v1/chat/completions"}
        assert {r.decision for r in results} == {"local", "offload"}
        assert all(r.status == 200 for r in results)
        assert sink.redacted == {
            k: 2 for k in ["email", "phone", "card", "cn_id", "iban", "ipv4", "ipv6"]
        }
        assert sum(d[1] == "offload" for d in sink.decisions) == len(leaving)
        # local calls got the original body (no redaction needed in the cluster)
        assert any("olivia.martin@example.org" in json.dumps(b) for b, _ in local.calls)
        log = audit.getvalue()
        for value in PII_VALUES:
            assert value not in log
        assert "describe the picture" not in log and "REQ0" not in log
        assert len(log.splitlines()) == len(traffic)

    run(main)


def test_unknown_fields_holding_pii_never_reach_the_cloud() -> None:
    body = {
        "model": "shapes",
        "user": "carol@example.com",
        "metadata": {"type": "4111 1111 1111 1111", "alice@example.com": "x"},
        "seed": 7,
        "max_tokens": 5,
        "temperature": 0.5,
        "messages": [
            {
                "role": "user",
                "model": "bob@example.com",
                "name": "erin@example.com",
                "content": "hello, I am dave@example.com",
            }
        ],
    }

    async def main() -> None:
        fake = FakeCloud()
        async with serve(fake) as endpoint:
            gw, audit, sink = make_gateway(endpoint)
            res = await serve_request(
                gw, body, {"X-Data-Class": "public", "X-Route": "cloud"}, local_model=LocalModel()
            )
            await gw.close()
        assert res.decision == "offload"
        assert fake.received == [
            {
                "model": "shapes",
                "messages": [{"role": "user", "content": "hello, I am [EMAIL]"}],
                "max_tokens": 5,
                "temperature": 0.5,
                "stream": False,
            }
        ]
        sent = b"".join(fake.raw).decode()
        for value in ["4111 1111 1111 1111", "example.com", "metadata", "seed", "name"]:
            assert value not in sent
        line = json.loads(audit.getvalue())
        assert line["pii"] == {"card": 1, "email": 5}  # everything the request held
        assert line["redactions"] == {"email": 1}  # what was redacted in what left
        assert sink.redacted == {"email": 1}

    run(main)


def test_pii_in_a_forwarded_keyword_value_is_never_sent() -> None:
    body = {"model": "bob@example.com", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"X-Data-Class": "public", "X-Route": "cloud"}

    async def main() -> None:
        fake = FakeCloud()
        async with serve(fake) as endpoint:
            gw, audit, _ = make_gateway(endpoint)
            res = await serve_request(gw, body, headers, local_model=LocalModel())
            await gw.close()
            assert res.decision == "fallback" and fake.raw == []
            assert json.loads(audit.getvalue())["pii"] == {"email": 1}
            # with a model name of its own, the endpoint never sees the client's
            gw, _, _ = make_gateway(endpoint, model="cloud-model")
            res = await serve_request(gw, body, headers, local_model=LocalModel())
            await gw.close()
        assert res.decision == "offload"
        assert fake.received == [
            {
                "model": "cloud-model",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": False,
            }
        ]

    run(main)


NEW_FORMATS = [
    "07700 900123",
    "01632 960983",
    "030 12345678",
    "(030) 1234567",
    "0171 1234567",
    "Tel. 030/12345678",
    "0044 20 7946 0958",
    "phone: 5551234567",
    "call 02079460958",
    "4111\u00a01111\u00a01111\u00a01111",
    "４１１１ １１１１ １１１１ １１１１",
    "user＠example.com",
    "192。168。1。1",
    "::ffff:192.0.2.128",
    "DE89-3704-0044-0532-0130-00",
    "jane_o'neil@example.org",
    "192.168.001.001",
]


def test_new_formats_are_redacted_before_they_leave() -> None:
    async def main() -> None:
        fake = FakeCloud()
        async with serve(fake) as endpoint:
            gw, _, _ = make_gateway(endpoint)
            for value in NEW_FORMATS:
                res = await serve_request(
                    gw,
                    chat(f"please note {value} thanks"),
                    {"X-Data-Class": "public", "X-Route": "cloud"},
                    local_model=LocalModel(),
                )
                assert res.decision == "offload", value
            await gw.close()
        assert len(fake.received) == len(NEW_FORMATS)
        for value, body in zip(NEW_FORMATS, fake.received, strict=True):
            content = unicodedata.normalize("NFKC", body["messages"][0]["content"])
            assert content.startswith("please note ") and content.endswith(" thanks")
            folded = unicodedata.normalize("NFKC", value).replace("\u3002", ".")
            assert folded.split()[-1] not in content, value
            digits = "".join(ch for ch in folded if ch.isdigit())
            assert not digits or digits[-6:] not in "".join(ch for ch in content if ch.isdigit())

    run(main)


def test_private_mode_sends_nothing_even_when_asked() -> None:
    async def main() -> None:
        fake = FakeCloud()
        async with serve(fake) as endpoint:
            gw, audit, sink = make_gateway(endpoint, mode="private")
            local = LocalModel()
            for headers, body, _, _ in mixed_traffic():
                await serve_request(gw, body, headers, local_model=local, queue_depth=1000)
            await gw.close()
        assert fake.raw == []
        assert {d[1] for d in sink.decisions} == {"local", "refuse"}  # refuse: X-Route: cloud
        refused = [json.loads(x) for x in audit.getvalue().splitlines() if '"refuse"' in x]
        assert refused and all("no cloud endpoint" in r["reason"] for r in refused)

    run(main)


@pytest.mark.parametrize("mode", ["fail", "slow"])
def test_endpoint_failure_falls_back_to_local(mode: str) -> None:
    async def main() -> None:
        fake = FakeCloud(mode=mode)
        async with serve(fake) as endpoint:
            gw, audit, sink = make_gateway(endpoint, timeout_s=0.2, retries=1)
            local = LocalModel()
            res = await serve_request(
                gw, chat("hello"), {"X-Data-Class": "public", "X-Route": "cloud"}, local_model=local
            )
            await gw.close()
        assert res.status == 200 and res.decision == "fallback"
        assert res.body["choices"][0]["message"]["content"] == "local"
        assert len(local.calls) == 1
        assert len(fake.raw) == 2  # one try + one retry
        line = json.loads(audit.getvalue())
        assert line["decision"] == "fallback" and line["answeredBy"] == "local"
        assert line["sent"] is True and line["destination"] == endpoint  # it did leave
        why = "HTTP 500 after 2 attempt(s)" if mode == "fail" else "timeout after 0.2s after 2"
        assert why in line["reason"]
        assert sink.decisions == [("hybrid", "fallback", "public")]

    run(main)


@pytest.mark.parametrize(
    "mode,why",
    [
        ("fail", "HTTP 500 after 1 attempt(s)"),
        ("redirect", "HTTP 302 (not retried)"),
        ("bad_request", "HTTP 400 (not retried)"),
        ("slow", "timeout after 0.2s"),
        ("not_json", "HTTP 200 with a body that is not JSON"),
        ("bad_encoding", "Content-Encoding cannot be decoded"),
        ("deep", "HTTP 200 with JSON nested too deeply"),
        ("no_choices", "answered a reply without choices"),
    ],
)
def test_audit_says_the_body_was_sent_when_the_call_then_failed(mode: str, why: str) -> None:
    async def main() -> None:
        fake = FakeCloud(mode=mode)
        async with serve(fake) as endpoint:
            gw, audit, sink = make_gateway(endpoint, timeout_s=0.2, retries=0)
            local = LocalModel()
            res = await serve_request(
                gw,
                chat("write to olivia.martin@example.org please"),
                {"X-Data-Class": "public", "X-Route": "cloud"},
                local_model=local,
            )
            await gw.close()
        assert res.status == 200 and res.body["choices"][0]["message"]["content"] == "local"
        assert len(fake.raw) == 1 and b"[EMAIL]" in fake.raw[0]
        (line,) = [json.loads(x) for x in audit.getvalue().splitlines()]
        assert line["decision"] == "fallback" and why in line["reason"], line["reason"]
        assert "after the body was sent" in line["reason"]
        assert (line["sent"], line["destination"], line["sentClass"]) == (True, endpoint, "public")
        assert line["redactions"] == {"email": 1} and line["answeredBy"] == "local"
        assert sink.redacted == {"email": 1}

    run(main)


def test_audit_says_nothing_was_sent_when_the_endpoint_was_unreachable() -> None:
    async def main() -> None:
        async with serve(FakeCloud()) as endpoint:
            pass  # the server is gone: connections are refused
        gw, audit, _ = make_gateway(endpoint, retries=0)
        res = await serve_request(
            gw, chat("hi"), {"X-Data-Class": "public", "X-Route": "cloud"}, local_model=LocalModel()
        )
        await gw.close()
        assert res.decision == "fallback"
        line = json.loads(audit.getvalue())
        assert "before the body was sent: connection error" in line["reason"]
        assert (line["sent"], line["destination"], line["sentClass"]) == (False, "local", None)
        assert line["redactions"] == {} and line["answeredBy"] == "local"

    run(main)


def test_retry_then_success() -> None:
    async def main() -> None:
        fake = FakeCloud(mode="flaky")
        async with serve(fake) as endpoint:
            gw, _, _ = make_gateway(endpoint)
            res = await serve_request(
                gw,
                chat("hi"),
                {"X-Data-Class": "public", "X-Route": "cloud"},
                local_model=LocalModel(),
            )
            await gw.close()
        assert res.decision == "offload" and len(fake.raw) == 2
        assert res.body["choices"][0]["message"]["content"] == "from cloud"

    run(main)


def test_missing_credentials_serve_locally_without_calling() -> None:
    async def main() -> None:
        fake = FakeCloud()
        async with serve(fake) as endpoint:
            hy = HybridArgs(endpoint=endpoint, credentials_env=KEY_ENV)
            gw = Gateway(
                IsolationArgs(mode="hybrid", hybrid=hy),
                audit=AuditLog(enabled=False),
                cloud=CloudClient(hy, env={}),
            )
            res = await serve_request(
                gw,
                chat("hi"),
                {"X-Data-Class": "public", "X-Route": "cloud"},
                local_model=LocalModel(),
            )
            await gw.close()
        assert res.decision == "fallback" and fake.raw == []

    run(main)


def test_cooldown_skips_the_endpoint_after_a_failure() -> None:
    async def main() -> None:
        fake = FakeCloud(mode="fail")
        now = [100.0]
        async with serve(fake) as endpoint:
            hy = HybridArgs(endpoint=endpoint, credentials_env=KEY_ENV, retries=0)
            cloud = CloudClient(hy, env={KEY_ENV: "k"}, cooldown_s=30, clock=lambda: now[0])
            with pytest.raises(CloudError, match="HTTP 500"):
                await cloud.post("chat/completions", {"x": 1})
            with pytest.raises(CloudError, match="cooldown"):
                await cloud.post("chat/completions", {"x": 1})
            assert len(fake.raw) == 1
            now[0] += 31
            fake.mode = "ok"
            assert (await cloud.post("chat/completions", {"x": 1}))["object"] == "chat.completion"
            await cloud.aclose()

    run(main)


def test_remote_image_refused_on_fallback() -> None:
    async def main() -> None:
        fake = FakeCloud(mode="fail")
        async with serve(fake) as endpoint:
            gw, _, _ = make_gateway(endpoint, retries=0)
            gw.args.images_sensitive = False
            res = await serve_request(
                gw,
                chat("hi", "https://img.example.com/x.png"),
                {"X-Data-Class": "public", "X-Route": "cloud"},
                local_model=LocalModel(),
            )
            await gw.close()
        assert res.status == 403 and res.body["error"]["code"] == "remote_image_refused"

    run(main)


def test_endpoint_must_be_https_except_loopback() -> None:
    check_endpoint("https://api.example.com/v1")
    check_endpoint("http://127.0.0.1:9000/v1")
    check_endpoint("http://localhost:9000/v1")
    with pytest.raises(ValueError, match=r"must be an https:// URL"):
        check_endpoint("http://api.example.com/v1")
    bad = IsolationArgs(mode="hybrid", hybrid=HybridArgs(endpoint="http://api.example.com/v1"))
    with pytest.raises(ValueError, match=r"hybrid endpoint 'http://api.example.com/v1'"):
        Gateway(bad)  # refused when the replica starts, not on the first offload


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found: install the Debian package `openssl` (make test does)")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_ca_bundle_lets_a_self_signed_endpoint_work(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def main() -> None:
        fake = FakeCloud()
        async with serve(fake, ctx) as endpoint:
            assert endpoint.startswith("https://")
            hy = HybridArgs(endpoint=endpoint, credentials_env=KEY_ENV, retries=0)
            untrusted = CloudClient(hy, env={KEY_ENV: "k"})
            with pytest.raises(CloudError, match="connection error"):
                await untrusted.post("chat/completions", {"a": 1})
            await untrusted.aclose()
            trusted = CloudClient(
                hy.model_copy(update={"ca_bundle": str(cert)}), env={KEY_ENV: "k"}
            )
            assert (await trusted.post("chat/completions", {"a": 1}))["object"] == "chat.completion"
            await trusted.aclose()
        assert len(fake.raw) == 1  # the untrusted attempt never completed a request

    run(main)
