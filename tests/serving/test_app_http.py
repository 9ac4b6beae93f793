"""Real HTTP against the Serve app on a private local Ray, with a small fake engine.

One deployment for the whole module. The fake engine is deterministic and says in its
answer which engine call produced it and how big that call's batch was, so tests can see
batching and cache hits without timing anything.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import ray
from ray import serve

from mmo_serving.builtin_engine import BuiltinEngineFactory
from mmo_serving.config import AppArgs
from mmo_serving.engine.types import (
    EmbeddingRequest,
    ExpertLoad,
    GenerationRequest,
    GenerationResult,
)
from mmo_serving.gateway import (
    AuditLog,
    Gateway,
    Offloaded,
    Refused,
    RequestInfo,
    ServingMetricsSink,
    Verdict,
)
from mmo_serving.images import encode_data_url
from ports import free_port

MODEL = "shapes"
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


def _colour_of(image: np.ndarray | None) -> str:
    if image is None:
        return "none"
    mean = image.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda c: float(((mean - np.array(COLOURS[c])) ** 2).sum()))


class FakeEngine:
    """Engine protocol stand-in: answers the image's colour, counts calls and load."""

    LAYERS, EXPERTS = 2, 4

    def __init__(self, args: AppArgs) -> None:
        self.ranks = args.num_gpus
        self.calls = 0
        self.plans: list[Any] = []
        self.tokens = [[[0] * self.ranks for _ in range(self.EXPERTS)] for _ in range(self.LAYERS)]

    async def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        await asyncio.sleep(0.05)  # a model call costs time; batching amortises it
        self.calls += 1
        out = []
        for it in items:
            words = f"{_colour_of(it.image)} call{self.calls} batch{len(items)}".split()
            words = words[: it.max_new_tokens]
            expert = len(it.text) % self.EXPERTS
            for layer in range(self.LAYERS):
                self.tokens[layer][expert][expert % self.ranks] += len(words)
            prompt = len(it.text.split()) + (100 if it.image is not None else 0)
            out.append(GenerationResult(" ".join(words), len(words), prompt_tokens=prompt))
        return out

    async def embed(self, items: list[EmbeddingRequest]) -> list[list[float]]:
        self.calls += 1
        vecs = []
        for it in items:
            if it.image is not None:
                r, g, b = (float(x) / 255 for x in it.image.reshape(-1, 3).mean(axis=0))
                vecs.append([r, g, b, 0.0])
            else:
                vecs.append([0.0, 0.0, 0.0, float(len(it.text or ""))])
        return vecs

    async def expert_load(self) -> ExpertLoad:
        return ExpertLoad(
            num_layers=self.LAYERS,
            num_experts=self.EXPERTS,
            num_ranks=self.ranks,
            tokens=self.tokens,
            window=self.tokens,
            plan_version=len(self.plans),
        )

    async def update_plan(self, plan: Any) -> None:
        self.plans.append(plan)

    async def rank_info(self) -> list[dict[str, Any]]:
        # the GPUs Ray gave the process the engine runs in (the replica's)
        return [{"rank": 0, "gpuIds": [str(g) for g in ray.get_gpu_ids()]}]

    async def close(self) -> None:
        pass


def make_fake_engine(args: AppArgs) -> FakeEngine:
    return FakeEngine(args)


fake_engine_factory = BuiltinEngineFactory(make_fake_engine)


class ScriptedGateway(Gateway):
    """The isolation gateway, except: texts with [refuse] are refused, [offload] is
    offloaded."""

    def __init__(self, args: AppArgs) -> None:
        super().__init__(
            args.isolation, metrics=ServingMetricsSink(), audit=AuditLog(enabled=False)
        )

    async def decide(self, info: RequestInfo) -> Verdict:
        text = json.dumps(info.body)
        if "[refuse]" in text:
            return Refused(403, "sensitive data may not leave (test)", "policy_refused")
        if "[offload]" in text:
            response = {
                "id": "chatcmpl-remote",
                "object": "chat.completion",
                "created": 1,
                "model": "remote",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "from the cloud"},
                        "finish_reason": "stop",
                    }
                ],
            }
            return Offloaded("public", "default", response)
        return await super().decide(info)


ARGS = {
    "name": MODEL,
    "modelSource": "builtin://shapes-moe",
    "modelVersion": "7",
    "numGpus": 2,
    "maxNewTokens": 8,
    "maxImageBytes": 20_000,
    "batching": {"maxBatchSize": 16, "batchWaitTimeoutS": 0.3},
    "cache": {"enabled": True, "maxEntries": 64, "ttlSeconds": 600},
    # the declared class stays the class of a request with a picture, so that the cache
    # scopes by class can be seen on picture questions
    "isolation": {"imagesSensitive": False},
}


class Server:
    def __init__(self, url: str, metrics_url: str) -> None:
        self.url = url
        self.metrics_url = metrics_url
        self.http = httpx.Client(base_url=url, timeout=60)

    def chat(
        self, content: Any, headers: dict[str, str] | None = None, **extra: Any
    ) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
        return self.http.post("/v1/chat/completions", json=body, headers=headers or {})


@pytest.fixture(scope="module")
def server(ray_cluster: Any) -> Iterator[Server]:
    from ray import cloudpickle

    from mmo_serving.app import build_app

    # The fake engine lives in this test module, which Ray workers cannot import.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    http_port = free_port()
    metrics_port = ray.nodes()[0]["MetricsExportPort"]
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        app = build_app(
            ARGS,
            engine_factory=fake_engine_factory,
            gateway_factory=ScriptedGateway,
            # a fixed code version: a later serve.run that changes only user_config is a
            # lightweight update (reconfigure), as with serveConfigV2 under KubeRay (where
            # Serve derives the version from the import path). Ray 2.60 removed the public
            # `version` option; serve.run otherwise draws a random one per call.
            options={"version": "test", "_internal": True},
        )
        serve.run(app, name="mmo", route_prefix="/")
        # the same app with the default gateway (mmo_serving.gateway.build_gateway)
        gw_args = {**ARGS, "name": "gw"}
        serve.run(
            build_app(gw_args, engine_factory=fake_engine_factory), name="gw", route_prefix="/gw"
        )
        # one GPU: the engine runs inside the replica, which must hold the GPU
        one_args = {**ARGS, "name": "one", "numGpus": 1}
        serve.run(
            build_app(one_args, engine_factory=fake_engine_factory), name="one", route_prefix="/one"
        )
        yield Server(f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        serve.shutdown()  # the session's Ray stays up for the next module


def _image(colour: str, size: int = 16) -> str:
    return encode_data_url(np.full((size, size, 3), COLOURS[colour], dtype=np.uint8))


def _ask(colour: str, question: str = "what colour is the shape?") -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": question},
        {"type": "image_url", "image_url": {"url": _image(colour)}},
    ]


# --------------------------------------------------------------------------- happy paths


def test_app_chat_with_image_answers(server: Server) -> None:
    r = server.chat(_ask("green"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    answer = body["choices"][0]["message"]["content"]
    assert answer.split()[0] == "green"
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 3 and usage["prompt_tokens"] > 100
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    assert r.headers["x-request-id"]  # Serve's proxy makes one when the client sends none
    r = server.chat(_ask("green"), headers={"X-Request-Id": "req-42"}, max_tokens=1)
    assert r.headers["x-request-id"] == "req-42"
    assert r.json()["choices"][0]["message"]["content"] == "green"
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_app_chat_streams_sse_chunks(server: Server) -> None:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": _ask("blue")}]}
    with server.http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.split()[0] == "blue" and len(text.split()) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_app_embeddings_text_and_image(server: Server) -> None:
    r = server.http.post(
        "/v1/embeddings",
        json={
            "model": MODEL,
            "input": ["abc", {"type": "image_url", "image_url": {"url": _image("red")}}],
        },
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert data[0]["embedding"] == [0.0, 0.0, 0.0, 3.0]
    assert data[1]["embedding"][0] == pytest.approx(220 / 255, abs=1e-3)
    r = server.http.post(
        "/v1/embeddings", json={"model": MODEL, "input": "abcd", "encoding_format": "base64"}
    )
    raw = __import__("base64").b64decode(r.json()["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [0.0, 0.0, 0.0, 4.0]


def test_app_models_health_ready(server: Server) -> None:
    models = server.http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert server.http.get("/healthz").json() == {"status": "ok"}
    ready = server.http.get("/readyz").json()
    assert ready["status"] == "ready" and ready["engine"] == "FakeEngine"
    assert ready["modelVersion"] == "7"


def test_app_one_gpu_engine_sees_its_gpu(server: Server) -> None:
    ready = server.http.get("/one/readyz").json()
    assert ready["numGpus"] == 1
    (rank,) = ready["ranks"]
    assert len(rank["gpuIds"]) == 1, ready  # Ray gave the replica (the engine's process) a GPU


# --------------------------------------------------------------------------------- errors


def _error(r: httpx.Response, status: int, code: str, needle: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    assert needle in err["message"], err["message"]
    assert r.headers["x-request-id"]
    return err


def test_app_error_responses(server: Server) -> None:
    img = "messages[0].content[1].image_url.url"
    bad = [{"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": ""}}]

    def with_url(url: str) -> list[dict[str, Any]]:
        bad[1]["image_url"]["url"] = url
        return bad

    err = _error(
        server.chat(with_url("data:image/png;base64,%%%")), 400, "invalid_base64", "invalid base64"
    )
    assert err["param"] == img
    _error(
        server.chat(with_url("data:image/gif;base64,R0lGODlh")),
        400,
        "unsupported_image_type",
        "supported: image/png, image/jpeg, image/webp",
    )
    big = "data:image/png;base64," + "A" * 40_000
    _error(server.chat(with_url(big)), 413, "image_too_large", "the limit is 20000 bytes")
    err = _error(
        server.chat(with_url("http://x/y.png")),
        403,
        "remote_image_refused",
        "remote image URLs are not fetched: send the image inline as a data: URL",
    )
    assert err["type"] == "policy_error"
    _error(server.chat(with_url("x/y.png")), 400, "unsupported_image_url", "only inline data:")
    err = _error(
        server.chat([{"type": "image_url", "image_url": {"detail": "low"}}]),
        400,
        "invalid_schema",
        "Field required",
    )
    assert err["param"] == "messages[0].content[0].image_url.url"
    r = server.http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
    )
    err = _error(r, 404, "model_not_found", "'gpt-4' does not exist")
    assert err["param"] == "model"
    r = server.http.post("/v1/chat/completions", content=b"{not json")
    _error(r, 400, "invalid_json", "not valid JSON")
    two = [*_ask("red"), {"type": "image_url", "image_url": {"url": _image("blue")}}]
    _error(server.chat(two), 400, "too_many_images", "at most 1 image(s) per request")
    _error(
        server.chat("hi", headers={"X-Data-Class": "secret"}),
        400,
        "invalid_data_class",
        "header X-Data-Class: unknown value",
    )
    _error(server.chat("hi", headers={"X-Route": "moon"}), 400, "invalid_route", "X-Route")
    _error(server.chat("hi", headers={"X-Tenant": "t" * 65}), 400, "invalid_tenant", "X-Tenant")
    err = _error(server.http.get("/v1/chat"), 404, "unknown_route", "no route /v1/chat")
    assert err["type"] == "invalid_request_error"
    r = server.http.get("/v1/chat/completions")
    _error(r, 405, "method_not_allowed", "method GET is not allowed on /v1/chat/completions")
    assert r.headers["allow"] == "POST"
    r = server.http.post("/v1/embeddings", json={"model": MODEL, "input": []})
    _error(r, 400, "invalid_schema", "input: must not be empty")


def test_app_gateway_refuses_and_offloads(server: Server) -> None:
    err = _error(server.chat("my card [refuse]"), 403, "policy_refused", "may not leave (test)")
    assert err["type"] == "policy_error"
    r = server.chat("hello [offload]")
    assert r.status_code == 200 and r.headers["x-mmo-cache"] == "offload"
    assert r.json()["choices"][0]["message"]["content"] == "from the cloud"
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "[offload]"}]}
    with server.http.stream("POST", "/v1/chat/completions", json=body) as s:
        lines = [ln for ln in s.iter_lines() if ln]
    text = "".join(
        json.loads(ln[6:])["choices"][0]["delta"].get("content") or "" for ln in lines[:-1]
    )
    assert text == "from the cloud" and lines[-1] == "data: [DONE]"


def test_app_default_gateway_is_the_isolation_gateway(server: Server) -> None:
    def ask(content: Any, **headers: str) -> httpx.Response:
        body = {"model": "gw", "messages": [{"role": "user", "content": content}]}
        return server.http.post("/gw/v1/chat/completions", json=body, headers=headers)

    remote = [
        {"type": "text", "text": "what colour?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    err = _error(ask(remote), 403, "remote_image_refused", "remote image URLs are not fetched")
    assert err["type"] == "policy_error"
    ok = ask(_ask("red"))
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"].startswith("red")


# ------------------------------------------------------------------------- cache, batching


def test_app_cache_hit_and_scopes(server: Server) -> None:
    q = _ask("red", "which colour is it? (cache test)")
    first = server.chat(q)
    again = server.chat(q)
    assert first.headers["x-mmo-cache"] == "miss"
    assert again.headers["x-mmo-cache"] == "hit"
    # same engine call: the answer names the call that produced it
    assert (
        again.json()["choices"][0]["message"]["content"]
        == (first.json()["choices"][0]["message"]["content"])
    )
    public = server.chat(q, headers={"X-Data-Class": "public"})
    tenant = server.chat(q, headers={"X-Tenant": "acme"})
    assert public.headers["x-mmo-cache"] == "miss"
    assert public.headers["x-mmo-data-class"] == "public"
    assert tenant.headers["x-mmo-cache"] == "miss"
    assert len({r.json()["choices"][0]["message"]["content"] for r in (first, public, tenant)}) == 3
    # header values are case-insensitive, as the gateway reads them: same class, same entry
    shouted = server.chat(q, headers={"X-Data-Class": "Public"})
    assert shouted.status_code == 200 and shouted.headers["x-mmo-cache"] == "hit"
    assert shouted.headers["x-mmo-data-class"] == "public"


async def _concurrent_chats(url: str, n: int, tag: str) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int) -> str:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"{tag} {i}"}]}
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["message"]["content"])

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_app_concurrent_requests_are_batched(server: Server) -> None:
    answers = asyncio.run(_concurrent_chats(server.url, 12, "batching on"))
    sizes = [int(a.split()[2].removeprefix("batch")) for a in answers]
    assert max(sizes) > 1, sizes
    assert len({a.split()[1] for a in answers}) < 12  # fewer engine calls than requests


def test_app_reconfigure_changes_batch_size_without_restart(server: Server) -> None:
    from mmo_serving.app import build_app
    from mmo_serving.engine.routing import contiguous_plan

    pid_before = server.http.get("/readyz").json()
    plan = contiguous_plan(FakeEngine.LAYERS, FakeEngine.EXPERTS, 2)
    app = build_app(
        ARGS,
        engine_factory=fake_engine_factory,
        gateway_factory=ScriptedGateway,
        options={
            "version": "test",
            "_internal": True,
            "user_config": {
                "batching": {"maxBatchSize": 1, "batchWaitTimeoutS": 0.0},
                "placement": plan.model_dump(mode="json", by_alias=True),
            },
        },
    )
    serve.run(app, name="mmo", route_prefix="/")
    answers = asyncio.run(_concurrent_chats(server.url, 6, "batching off"))
    assert {a.split()[2] for a in answers} == {"batch1"}
    after = server.http.get("/readyz").json()
    assert after["startedAt"] == pid_before["startedAt"]  # same replica: no restart
    assert after["plansApplied"] == pid_before["plansApplied"] + 1
    load = server.http.get("/v1/expert-load").json()
    assert load["planVersion"] == 1  # the engine received the plan
    assert load["placement"]["strategy"] == "contiguous"


# -------------------------------------------------------------------- expert load, metrics


def test_app_expert_load_endpoint(server: Server) -> None:
    server.chat("expert load please")
    doc = server.http.get("/v1/expert-load").json()
    assert doc["numRanks"] == 2 and doc["numLayers"] == 2 and doc["numExperts"] == 4
    assert sum(sum(sum(r) for r in e) for e in doc["tokens"]) > 0
    assert len(doc["balancedness"]) == 2


EXPECTED_SERIES = [
    "ray_mmo_request_latency_seconds_bucket",
    "ray_mmo_requests_total",
    "ray_mmo_batch_size_bucket",
    "ray_mmo_queue_depth",
    "ray_mmo_generated_tokens_total",
    "ray_mmo_cache_hits_total",
    "ray_mmo_cache_misses_total",
    "ray_mmo_expert_tokens_total",
    "ray_mmo_expert_balancedness",
    "ray_mmo_policy_decisions_total",
    "ray_mmo_rebalances_total",
]


def _series(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out.setdefault(name, []).append(line)
    return out


def test_app_metrics_exported_after_traffic(server: Server) -> None:
    server.chat(_ask("red", "metrics test"))
    server.chat(_ask("red", "metrics test"))
    server.chat("x", headers={"X-Data-Class": "bogus"})  # a 400
    server.http.get("/v1/expert-load")
    deadline = time.monotonic() + 60  # Ray reports every few seconds
    missing: list[str] = EXPECTED_SERIES
    while time.monotonic() < deadline:
        series = _series(httpx.get(server.metrics_url, timeout=10).text)
        missing = [m for m in EXPECTED_SERIES if m not in series]
        if not missing and any('code="400"' in s for s in series["ray_mmo_requests_total"]):
            break
        time.sleep(1)
    assert not missing, missing
    reqs = series["ray_mmo_requests_total"]
    assert any('route="/v1/chat/completions"' in s and 'code="200"' in s for s in reqs)
    assert any('code="400"' in s for s in reqs)
    lat = series["ray_mmo_request_latency_seconds_bucket"]
    assert any(
        'cache="hit"' in s and 'modality="image"' in s and 'mode="private"' in s for s in lat
    )
    # batches of more than one request were observed: mean batch size > 1
    bsum = sum(float(s.rsplit(" ", 1)[1]) for s in series["ray_mmo_batch_size_sum"])
    bcount = sum(float(s.rsplit(" ", 1)[1]) for s in series["ray_mmo_batch_size_count"])
    assert bsum > bcount
    experts = series["ray_mmo_expert_tokens_total"]
    assert any('layer="1"' in s and 'rank="1"' in s and 'expert="' in s for s in experts)
