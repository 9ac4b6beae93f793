"""Unit tests of the Serve app's pure parts: cache, images, schema errors, gateway seam,
metric names. No Ray."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from mmo_serving.backend import ChatDelta, ChatOutput
from mmo_serving.cache import CacheScope, ResponseCache, cache_key
from mmo_serving.config import AppArgs, IsolationArgs, RuntimeConfig
from mmo_serving.gateway import Local, RequestInfo, build_gateway
from mmo_serving.images import decode_data_url, encode_data_url
from mmo_serving.metrics import SERVING_METRICS
from mmo_serving.openai import schema as oa

# ------------------------------------------------------------------------------- cache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_app_cache_lru_evicts_least_recently_used() -> None:
    cache: ResponseCache[int] = ResponseCache(2, 60)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
    assert (cache.hits, cache.misses) == (3, 1)


def test_app_cache_ttl_expires() -> None:
    clock = FakeClock()
    cache: ResponseCache[str] = ResponseCache(10, 5, clock=clock)
    cache.put("k", "v")
    clock.now = 4.9
    assert cache.get("k") == "v"
    clock.now = 5.0
    assert cache.get("k") is None
    assert len(cache) == 0


def test_app_cache_key_separates_version_class_tenant() -> None:
    req = {"prompt": "what colour?", "image": "abc", "max_new_tokens": 8}
    base = CacheScope("1", "internal", "default")
    k = cache_key("/v1/chat/completions", req, base)
    assert k == cache_key("/v1/chat/completions", dict(reversed(req.items())), base)
    others = [
        cache_key("/v1/chat/completions", req, CacheScope("2", "internal", "default")),
        cache_key("/v1/chat/completions", req, CacheScope("1", "public", "default")),
        cache_key("/v1/chat/completions", req, CacheScope("1", "internal", "acme")),
        cache_key("/v1/embeddings", req, base),
        cache_key("/v1/chat/completions", {**req, "max_new_tokens": 4}, base),
    ]
    assert len({k, *others}) == 6


def test_app_cache_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ResponseCache(0, 1)
    with pytest.raises(ValueError, match="ttl_seconds"):
        ResponseCache(1, 0)


# ------------------------------------------------------------------------------ images


def _png(w: int = 4, h: int = 3, rgb: tuple[int, int, int] = (200, 10, 10)) -> str:
    return encode_data_url(np.full((h, w, 3), rgb, dtype=np.uint8))


def test_app_image_decodes_png_and_jpeg() -> None:
    img = decode_data_url(_png(), max_bytes=10_000, param="p")
    assert img.array.shape == (3, 4, 3) and img.array.dtype == np.uint8
    assert tuple(img.array[0, 0]) == (200, 10, 10)
    buf = io.BytesIO()
    Image.new("L", (5, 5), 128).save(buf, format="JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    grey = decode_data_url(url, max_bytes=10_000, param="p")
    assert grey.array.shape == (5, 5, 3) and grey.mime == "image/jpeg"


@pytest.mark.parametrize(
    ("url", "status", "code", "needle"),
    [
        ("https://example.com/cat.png", 400, "unsupported_image_url", "only inline data: URLs"),
        ("data:image/png;base64", 400, "invalid_image_url", "no ','"),
        ("data:image/gif;base64,R0lGOD", 400, "unsupported_image_type", "'image/gif'"),
        ("data:image/png,abcd", 400, "invalid_image_url", "base64-encoded"),
        ("data:image/png;base64,@@@@", 400, "invalid_base64", "invalid base64"),
        ("data:image/png;base64," + "A" * 4000, 413, "image_too_large", "limit is 1000"),
        (
            "data:image/png;base64," + base64.b64encode(b"not an image").decode(),
            400,
            "invalid_image",
            "the data is not a readable image/png image",
        ),
    ],
)
def test_app_image_errors(url: str, status: int, code: str, needle: str) -> None:
    with pytest.raises(oa.ApiError) as err:
        decode_data_url(url, max_bytes=1000, param="messages[0].content[1].image_url.url")
    assert err.value.status == status
    assert err.value.code == code
    assert needle in err.value.message
    assert err.value.param == "messages[0].content[1].image_url.url"


def test_app_image_declared_type_must_match_bytes() -> None:
    png = _png().split(",", 1)[1]
    with pytest.raises(oa.ApiError, match="says image/jpeg but the bytes are PNG"):
        decode_data_url("data:image/jpeg;base64," + png, max_bytes=10_000, param="p")


# ------------------------------------------------------------------------------ schema


def test_app_schema_error_names_field_path() -> None:
    body = (
        b'{"model": "m", "messages": [{"role": "user", "content": '
        b'[{"type": "image_url", "image_url": {}}]}]}'
    )
    with pytest.raises(oa.ApiError) as err:
        oa.parse_model(oa.ChatCompletionRequest, body)
    assert err.value.status == 400 and err.value.code == "invalid_schema"
    assert err.value.param == "messages[0].content[0].image_url.url"
    assert "Field required" in err.value.message


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "body is empty"),
        (b"{nope", "not valid JSON"),
        (b"[1]", "must be a JSON object, got list"),
        (b'{"model": "m", "messages": []}', "messages: List should have at least 1 item"),
        (b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}', "role"),
    ],
)
def test_app_schema_bad_bodies(body: bytes, needle: str) -> None:
    with pytest.raises(oa.ApiError) as err:
        oa.parse_model(oa.ChatCompletionRequest, body)
    assert err.value.status == 400
    assert needle in err.value.message
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


def test_app_runtime_config_accepts_camel_case() -> None:
    cfg = RuntimeConfig.model_validate({"batching": {"maxBatchSize": 4, "batchWaitTimeoutS": 0.5}})
    assert cfg.batching is not None and cfg.batching.max_batch_size == 4
    assert cfg.placement is None


# ----------------------------------------------------------------------------- gateway


ARGS = AppArgs(name="m", model_source="builtin://shapes-moe")


def _info(headers: dict[str, str]) -> RequestInfo:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return RequestInfo("r", "/v1/chat/completions", headers, body, 1)


def test_app_gateway_uses_header_or_default_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, str]] = []

    class M:
        def policy_decision(self, **kw: str) -> None:
            calls.append(kw)

    monkeypatch.setattr("mmo_serving.metrics.serving_metrics", lambda: M())
    gw = build_gateway(ARGS.model_copy(update={"isolation": IsolationArgs(audit_enabled=False)}))
    d1 = asyncio.run(gw.decide(_info({"x-data-class": "public"})))
    d2 = asyncio.run(gw.decide(_info({"X-Tenant": "acme"})))
    assert d1 == Local("public", "default") and d2 == Local("internal", "acme")
    assert calls[0] == {"mode": "private", "decision": "local", "data_class": "public"}


# ----------------------------------------------------------------------------- metrics


def test_app_metric_names_follow_the_contract() -> None:
    assert SERVING_METRICS == {
        "mmo_request_latency_seconds": ("histogram", ("route", "modality", "cache", "mode")),
        "mmo_requests_total": ("counter", ("route", "code", "mode")),
        "mmo_batch_size": ("histogram", ("route",)),
        "mmo_queue_depth": ("gauge", ("route",)),
        "mmo_generated_tokens_total": ("counter", ()),
        "mmo_cache_hits_total": ("counter", ()),
        "mmo_cache_misses_total": ("counter", ()),
        "mmo_expert_tokens_total": ("counter", ("layer", "expert", "rank")),
        "mmo_expert_balancedness": ("gauge", ("layer",)),
        "mmo_rebalances_total": ("counter", ()),
        "mmo_policy_decisions_total": ("counter", ("mode", "decision", "class")),
        "mmo_pii_redactions_total": ("counter", ("kind",)),
    }


def test_app_schema_unknown_content_part_type() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}'
    with pytest.raises(oa.ApiError) as err:
        oa.parse_model(oa.ChatCompletionRequest, body)
    assert err.value.param == "messages[0].content[0]"
    assert "'type' must be 'text' or 'image_url'" in err.value.message


def test_app_local_prometheus_renames_ray_mmo_series() -> None:
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((root / "manifests/prometheus/prometheus.yml").read_text())
    job = cfg["scrape_configs"][0]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
    (rule,) = job["metric_relabel_configs"]
    assert rule["source_labels"] == ["__name__"] and rule["target_label"] == "__name__"

    def relabel(name: str) -> str:  # Prometheus anchors the regex; $1 is group 1
        m = re.fullmatch(rule["regex"], name)
        return rule["replacement"].replace("$1", m.group(1)) if m else name

    for metric in SERVING_METRICS:
        assert relabel("ray_" + metric) == metric
    assert relabel("ray_serve_num_http_requests_total") == "ray_serve_num_http_requests_total"


def test_app_deployment_options_from_app_args() -> None:
    from mmo_serving.deployment import deployment_options

    args = AppArgs.model_validate(
        {
            "name": "m",
            "modelSource": "builtin://shapes-moe",
            "numGpus": 8,
            "batching": {"maxBatchSize": 16, "batchWaitTimeoutS": 0.02},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetOngoingRequests": 12,
                "maxOngoingRequests": 48,
            },
        }
    )
    opts = deployment_options(args)
    assert opts["name"] == "mmo-ingress"
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    bundles = opts["placement_group_bundles"]
    assert len(bundles) == 8 and all(b["GPU"] == 1 for b in bundles)
    # the replica itself fits in bundle 0 and takes no GPU: the ranks do
    assert opts["ray_actor_options"]["num_gpus"] == 0
    assert opts["ray_actor_options"]["num_cpus"] <= bundles[0]["CPU"]
    auto = opts["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (1, 3)
    assert auto["target_ongoing_requests"] == 12
    assert opts["max_ongoing_requests"] == 48
    assert opts["user_config"] == {"batching": {"maxBatchSize": 16, "batchWaitTimeoutS": 0.02}}
    spread = deployment_options(args, accelerator="accelerator_type:A100", nodes_per_replica=2)
    assert spread["placement_group_strategy"] == "PACK"
    assert all(b["accelerator_type:A100"] == 1 for b in spread["placement_group_bundles"])


def test_app_deployment_options_one_gpu_replica_holds_it() -> None:
    from mmo_serving.deployment import deployment_options

    one = deployment_options(ARGS, accelerator="accelerator_type:A100")
    # the engine runs inside the replica: the replica, not a bundle, holds the GPU
    assert "placement_group_bundles" not in one and "placement_group_strategy" not in one
    assert one["ray_actor_options"] == {
        "num_cpus": 0.75,
        "num_gpus": 1,
        "resources": {"accelerator_type:A100": 1.0},
    }
    assert deployment_options(ARGS)["ray_actor_options"] == {"num_cpus": 0.75, "num_gpus": 1}


def test_app_deployment_options_vllm_front_takes_no_gpu() -> None:
    from mmo_serving.deployment import deployment_options

    vllm = ARGS.model_copy(update={"engine": "vllm", "num_gpus": 4})
    opts = deployment_options(vllm, accelerator="accelerator_type:A100")
    assert opts["ray_actor_options"] == {"num_cpus": 0.5}
    assert "placement_group_bundles" not in opts


def test_app_deployment_options_overrides_come_first() -> None:
    from mmo_serving.deployment import deployment_options

    cpu = {"num_cpus": 0.5, "num_gpus": 0}
    opts = deployment_options(ARGS, overrides={"ray_actor_options": cpu, "version": "v"})
    assert opts["ray_actor_options"] == cpu and opts["version"] == "v"
    assert opts["max_ongoing_requests"] == ARGS.autoscaling.max_ongoing_requests


# ----------------------------------------------------------------------------- front


def _sse_events(deltas: list[ChatDelta]) -> list[Any]:
    from mmo_serving.openai.sse import events

    async def gen() -> AsyncIterator[ChatDelta]:
        for d in deltas:
            yield d

    async def collect() -> list[str]:
        return [e async for e in events("c1", 5, "m", gen())]

    out = asyncio.run(collect())
    assert out[-1] == "data: [DONE]\n\n"
    return [json.loads(e.removeprefix("data: ")) for e in out[:-1]]


def test_app_sse_from_deltas_role_content_finish() -> None:
    chunks = _sse_events([ChatDelta("Hel"), ChatDelta("lo"), ChatDelta("", "length", 3, 2)])
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert [d.get("content") for d in deltas[1:3]] == ["Hel", "lo"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["id"] == "c1" and c["model"] == "m" for c in chunks)


def test_app_sse_words_stream_a_whole_answer_word_by_word() -> None:
    from mmo_serving.openai.sse import words

    async def collect() -> list[ChatDelta]:
        return [d async for d in words(ChatOutput("a red circle", "stop", 4, 3))]

    got = asyncio.run(collect())
    assert [d.text for d in got] == ["a", " red", " circle", ""]
    assert (got[-1].finish_reason, got[-1].prompt_tokens, got[-1].completion_tokens) == (
        "stop",
        4,
        3,
    )


def test_app_streamed_answer_is_stored_once_complete() -> None:
    from mmo_serving.openai.sse import primed, stored_when_complete, words

    stored: list[ChatOutput] = []

    async def main() -> list[str]:
        whole = ChatOutput("blue yes", "length", 2, 2)
        deltas = await primed(stored_when_complete(words(whole), stored.append))
        assert stored == []  # only the first delta has been computed
        return [d.text async for d in deltas]

    assert asyncio.run(main()) == ["blue", " yes", ""]
    assert stored == [ChatOutput("blue yes", "length", 2, 2)]


def test_app_primed_raises_before_the_response_starts() -> None:
    from mmo_serving.openai.sse import primed

    async def failing() -> AsyncIterator[ChatDelta]:
        raise RuntimeError("rank 1 lost")
        yield ChatDelta("")  # pragma: no cover

    with pytest.raises(RuntimeError, match="rank 1 lost"):
        asyncio.run(primed(failing()))


def test_app_unknown_route_and_method_in_openai_shape() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mmo_serving.openai.errors import install_error_handlers

    api = FastAPI()

    @api.post("/v1/embeddings")
    async def embed() -> dict[str, str]:
        return {}

    install_error_handlers(api)
    client = TestClient(api)
    r = client.get("/v1/nothing")
    assert r.status_code == 404
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "unknown_route" and "no route /v1/nothing" in err["message"]
    assert "POST /v1/chat/completions" in err["message"]
    r = client.get("/v1/embeddings")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    err = r.json()["error"]
    assert err["code"] == "method_not_allowed" and err["type"] == "invalid_request_error"
    assert "method GET is not allowed on /v1/embeddings; allowed: POST" in err["message"]


VLLM_ARGS = AppArgs(name="m", model_source="file:///ckpt/m", engine="vllm", num_gpus=2)


def _vllm_app(accelerator: Any = None) -> tuple[Any, list[dict[str, Any]]]:
    """build_app for engine vllm with Ray Serve LLM's builder replaced by a recorder that
    returns a plain bound deployment (Ray Serve LLM needs vLLM, absent from this venv)."""
    from ray import serve

    from mmo_serving.app import build_app, build_vllm_app

    @serve.deployment(name="fake-llm")
    class FakeLlm:
        pass

    configs: list[dict[str, Any]] = []

    def llm_deployment(config: dict[str, Any]) -> Any:
        configs.append(config)
        return FakeLlm.bind()

    if accelerator is None:
        app = build_vllm_app(VLLM_ARGS, llm_deployment=llm_deployment)
        assert "engine_handle" not in build_app(ARGS)._bound_deployment.init_kwargs
    else:
        app = build_vllm_app(VLLM_ARGS, llm_deployment=llm_deployment, accelerator=accelerator)
    return app._bound_deployment, configs


def test_app_build_vllm_app_binds_the_llm_deployment_as_the_engine_handle() -> None:
    from mmo_serving.deployment import INGRESS_DEPLOYMENT, deployment_options

    ingress, configs = _vllm_app()
    assert ingress.name == INGRESS_DEPLOYMENT
    assert ingress.init_args == (VLLM_ARGS.to_json_dict(),)
    assert ingress.init_kwargs["engine_handle"]._bound_deployment.name == "fake-llm"
    expected = deployment_options(VLLM_ARGS)
    assert ingress.ray_actor_options == {**expected["ray_actor_options"]}
    assert "num_gpus" not in ingress.ray_actor_options
    # in a cluster (Serve calls build_app with args only) the engine runs on GPUs
    (config,) = configs
    assert "accelerator_config" not in config
    assert config["engine_kwargs"]["data_parallel_size"] == 2
    assert config["engine_kwargs"]["enable_expert_parallel"] is True
    assert config["model_loading_config"] == {"model_id": "m", "model_source": "/ckpt/m"}


def test_app_build_vllm_app_on_cpu_asks_for_no_gpu() -> None:
    _ingress, (config,) = _vllm_app("cpu")
    assert config["accelerator_config"] == {"kind": "cpu"}
    assert config["engine_kwargs"]["data_parallel_size"] == 1
    assert "enable_expert_parallel" not in config["engine_kwargs"]


def test_app_build_app_passes_the_accelerator_to_the_vllm_builder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mmo_serving import app

    seen: list[Any] = []
    monkeypatch.setattr(app, "build_vllm_app", lambda args, **kw: seen.append(kw["accelerator"]))
    app.build_app(VLLM_ARGS, accelerator="cpu")
    app.build_app(VLLM_ARGS.to_json_dict())
    assert seen == ["cpu", "gpu"]


def test_app_expert_load_recorder_exports_deltas_of_counts_updated_in_place() -> None:
    from mmo_serving.engine.types import ExpertLoad
    from mmo_serving.expert_load import ExpertLoadRecorder

    exported: list[tuple[int, int, int, int]] = []

    class Metrics:
        def expert_tokens(self, layer: int, expert: int, rank: int, n: int) -> None:
            exported.append((layer, expert, rank, n))

        def balancedness(self, layer: int, value: float) -> None:
            pass

    class Engine:
        def __init__(self) -> None:
            self.tokens = [[[0, 0], [0, 0]]]  # the engine keeps updating this very list

        async def expert_load(self) -> ExpertLoad:
            t = self.tokens
            return ExpertLoad(num_layers=1, num_experts=2, num_ranks=2, tokens=t, window=t)

    async def main() -> None:
        engine = Engine()
        recorder = ExpertLoadRecorder(engine, Metrics(), dict)  # type: ignore[arg-type]
        try:
            await recorder.record()
            engine.tokens[0][1][1] += 5
            await recorder.record()
        finally:
            recorder.stop()

    asyncio.run(main())
    assert exported == [(0, 1, 1, 5)]


def test_app_request_body_over_the_limit_is_413_with_the_limit() -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    from mmo_serving.openai.body import read_body
    from mmo_serving.openai.errors import error_response

    api = FastAPI()

    @api.post("/v1/embeddings")
    async def embed(request: Request) -> JSONResponse:
        try:
            return JSONResponse({"read": len(await read_body(request, 1024))})
        except oa.ApiError as exc:
            return error_response(exc)

    client = TestClient(api)
    assert client.post("/v1/embeddings", content=b"x" * 1024).json() == {"read": 1024}
    message = "request body is larger than the limit of 1024 bytes (spec.serving.maxRequestBytes)"
    r = client.post("/v1/embeddings", content=b"x" * 1025)  # Content-Length over the limit
    assert r.status_code == 413
    assert r.json()["error"] == {
        "message": message, "type": "invalid_request_error", "param": None,
        "code": "request_too_large",
    }  # fmt: skip

    def chunks() -> Any:  # no Content-Length: the body grows over the limit while read
        for _ in range(8):
            yield b"y" * 200

    r = client.post("/v1/embeddings", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["message"] == message
    r = client.post("/v1/embeddings", content=b"{}", headers={"Content-Length": "2x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_length"


@pytest.mark.parametrize(
    "raw,message",
    [
        (b'{"model": "m", "input": "\\ud800"}', "a \\u escape of a lone UTF-16 surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON: nested too deeply"),
    ],
)
def test_app_lone_surrogates_and_deep_json_are_400(raw: bytes, message: str) -> None:
    with pytest.raises(oa.ApiError) as exc:
        oa.parse_model(oa.EmbeddingRequest, raw)
    assert exc.value.status == 400 and exc.value.code == "invalid_json"
    assert message in exc.value.message
    # a surrogate pair is one character: fine
    assert oa.parse_model(oa.EmbeddingRequest, b'{"model": "m", "input": "\\ud83d\\ude00"}')
