"""The Ray Serve application: ``mmo_serving.app:build_app`` (serveConfigV2 import path).

One ingress deployment (FastAPI via ``serve.ingress``) is the front for every engine:

    HTTP -> OpenAI schema -> gateway.decide -> cache -> ChatEngine (built-in or vLLM)

Routes: ``POST /v1/chat/completions`` (text + inline image, ``stream``), ``POST
/v1/embeddings`` (text or image), ``GET /v1/models``, ``GET /healthz``, ``GET /readyz``,
``GET /v1/expert-load``. Every error, unknown routes and methods included, is
OpenAI-style JSON (:mod:`mmo_serving.openai.errors`).

The engine sits behind :class:`~mmo_serving.backend.ChatEngine`, made by an engine
factory ``(args, engine_handle)``; ``engine_handle`` is the Serve handle of a separate
engine deployment where there is one (vLLM). The deployment's ``user_config`` is a
:class:`~mmo_serving.config.RuntimeConfig` that an engine with ``reconfigure`` applies
without a restart. Deployment options come from :mod:`mmo_serving.deployment`.
"""

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application

from mmo_serving.answer_cache import AnswerCache
from mmo_serving.backend import ChatEngine, EmbedInput, EngineUnsupported
from mmo_serving.config import AppArgs, RuntimeConfig
from mmo_serving.deployment import INGRESS_DEPLOYMENT, deployment_options
from mmo_serving.engines import EngineFactory, Tunable, default_engine_factory
from mmo_serving.expert_load import ExpertLoadRecorder
from mmo_serving.gateway import Gateway, Local, Offloaded, RequestInfo, build_gateway
from mmo_serving.metrics import ServingMetrics, serving_metrics
from mmo_serving.openai import chat, embeddings
from mmo_serving.openai import schema as oa
from mmo_serving.openai.body import read_body
from mmo_serving.openai.errors import error_response, install_error_handlers
from mmo_serving.openai.sse import events, primed, words
from mmo_serving.vllm_args import Accelerator, llm_config
from mmo_serving.vllm_engine import build_vllm_deployment

log = logging.getLogger("mmo_serving.app")

CHAT_ROUTE = "/v1/chat/completions"
EMBED_ROUTE = "/v1/embeddings"
ROUTES = (CHAT_ROUTE, EMBED_ROUTE)

GatewayFactory = Callable[[AppArgs], Gateway]
# an LLMConfig dict -> the bound engine deployment
LlmDeploymentBuilder = Callable[[dict[str, Any]], Application]

api = FastAPI(title="mmo", docs_url=None, redoc_url=None, openapi_url=None)
install_error_handlers(api)


# ``serve.ingress`` pickles the routes when the class is decorated: every global they
# use must exist before it.


class _Outcome:
    """What one request did, for the metrics recorded when it ends."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.code = 200
        self.modality = "text"
        self.cache = "off"
        self.start = time.perf_counter()
        self.request_id = ""
        self.error_code = ""
        self.audited = False  # the gateway wrote this request's audit line


def _scope(verdict: Local) -> tuple[str, str]:
    return verdict.data_class, verdict.tenant


def _embed_one(engine: ChatEngine, item: EmbedInput) -> Callable[[], Awaitable[list[float]]]:
    async def one() -> list[float]:
        (vector,) = await engine.embed([item])
        return vector

    return one


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress(api)
class MmoIngress:
    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        args: dict[str, Any],
        engine_handle: Any = None,
        engine_factory: EngineFactory | None = None,
        gateway_factory: GatewayFactory | None = None,
    ) -> None:
        self.args = AppArgs.model_validate(args)
        self.started_at = time.time()
        self.created = int(self.started_at)
        self.metrics: ServingMetrics = serving_metrics()
        self.inflight = dict.fromkeys(ROUTES, 0)
        self.gateway: Gateway = (gateway_factory or build_gateway)(self.args)
        self.cache = AnswerCache(self.args, self.metrics)
        made = (engine_factory or default_engine_factory)(self.args, engine_handle)
        self.engine: ChatEngine = await made if inspect.isawaitable(made) else made
        self.expert_load = ExpertLoadRecorder(self.engine, self.metrics, lambda: self.inflight)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new ``RuntimeConfig`` (Serve ``user_config``) without a restart."""
        cfg = RuntimeConfig.model_validate(user_config or {})
        if isinstance(self.engine, Tunable):
            await self.engine.reconfigure(cfg)

    async def __del__(self) -> None:
        self.expert_load.stop()
        with contextlib.suppress(Exception):
            await self.engine.close()
        with contextlib.suppress(Exception):
            await self.gateway.close()

    async def check_health(self) -> None:
        """Serve's replica health check: a lost engine rank makes Serve replace us."""
        self.expert_load.check_health()
        await self.engine.check_health()

    # ------------------------------------------------------------------ routes

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> Response:
        await self.check_health()
        engine: dict[str, Any] = {"engine": type(self.engine).__name__, "plansApplied": 0}
        if isinstance(self.engine, Tunable):
            engine.update(await self.engine.describe())
        return JSONResponse(
            {
                "status": "ready",
                "model": self.args.name,
                "modelVersion": self.args.model_version,
                "numGpus": self.args.num_gpus,
                "quantization": self.args.quantization,
                "mode": self.args.isolation.mode,
                "startedAt": self.started_at,
                "ranks": None,
                **engine,
            }
        )

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        card = oa.ModelCard(id=self.args.name, created=self.created)
        return oa.ModelList(data=[card]).model_dump()

    @api.get("/v1/expert-load")
    async def expert_load_route(self) -> Response:
        load = await self.expert_load.record()
        if load is None:
            err = oa.ApiError(
                404,
                f"engine {self.args.engine} does not report expert load",
                code="expert_load_unavailable",
            )
            return error_response(err)
        doc = load.to_json_dict()
        doc["model"] = self.args.name
        placement = self.args.placement
        doc["placement"] = placement.model_dump(mode="json", by_alias=True) if placement else None
        return JSONResponse(doc)

    @api.post(CHAT_ROUTE)
    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(CHAT_ROUTE, request, self._chat)

    @api.post(EMBED_ROUTE)
    async def embeddings(self, request: Request) -> Response:
        return await self._answer(EMBED_ROUTE, request, self._embeddings)

    # ------------------------------------------------------------------ request plumbing

    async def _answer(
        self,
        route: str,
        request: Request,
        handler: Callable[[Request, _Outcome], Awaitable[Response]],
    ) -> Response:
        """Run one API request: errors as OpenAI JSON, metrics, and exactly one audit
        line (the gateway's, or one here when the request ended before its verdict).
        The request id is the client's ``X-Request-Id`` or a new one."""
        self.inflight[route] += 1
        self.metrics.queue_depth(route, self.inflight[route])
        out = _Outcome(route)
        out.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            resp = await handler(request, out)
        except EngineUnsupported as exc:
            out.code, out.error_code = 400, "unsupported_by_engine"
            resp = error_response(oa.ApiError(400, str(exc), code="unsupported_by_engine"))
        except oa.ApiError as exc:
            out.code, out.error_code = exc.status, exc.code
            resp = error_response(exc)
        except Exception:
            log.exception("%s failed", route)
            out.code, out.error_code = 500, "internal_error"
            err = oa.ApiError(500, "internal error", code="internal_error", type="server_error")
            resp = error_response(err)
        finally:
            if not out.audited:
                self._audit_rejected(request, out)
            self.inflight[route] -= 1
            self.metrics.queue_depth(route, self.inflight[route])
            self.metrics.request(
                route=route,
                code=out.code,
                mode=self.args.isolation.mode,
                modality=out.modality,
                cache=out.cache,
                seconds=time.perf_counter() - out.start,
            )
        return resp

    def _audit_rejected(self, request: Request, out: _Outcome) -> None:
        try:
            self.gateway.record_rejected(
                out.request_id, request.headers.items(), out.route, out.code, out.error_code
            )
        except Exception:
            log.exception("%s: writing the audit line failed", out.route)

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.args.max_request_bytes)

    def _check_model(self, model: str) -> None:
        if model != self.args.name:
            raise oa.ApiError(
                404,
                f"model {model!r} does not exist; this endpoint serves {self.args.name!r}",
                code="model_not_found",
                param="model",
            )

    async def _gate(
        self, request: Request, out: _Outcome, req: oa.ChatCompletionRequest | oa.EmbeddingRequest
    ) -> Local | Offloaded:
        info = RequestInfo(
            request_id=out.request_id,
            route=out.route,
            headers=request.headers.items(),  # every copy: a repeated header is refused
            # the validated request, not the raw JSON: fields the schema ignores never
            # reach the gateway (nor, through an offload, the cloud endpoint)
            body=req.model_dump(mode="json", exclude_none=True),
            queue_depth=self.inflight[out.route],
        )
        verdict = await self.gateway.decide(info)
        out.audited = True
        if isinstance(verdict, Local | Offloaded):
            if isinstance(verdict, Offloaded):
                out.cache = "offload"
            return verdict
        raise oa.ApiError(
            verdict.status, verdict.message, code=verdict.code, param=verdict.param,
            type=verdict.error_type,
        )  # fmt: skip

    # ------------------------------------------------------------------ chat

    async def _chat(self, request: Request, out: _Outcome) -> Response:
        req: oa.ChatCompletionRequest = oa.parse_model(
            oa.ChatCompletionRequest, await self._body(request)
        )
        self._check_model(req.model)
        verdict = await self._gate(request, out, req)
        if isinstance(verdict, Offloaded):
            return self._reply_offloaded(verdict.response, req.stream)
        inp = chat.chat_input(req, req.model_dump(mode="json", exclude_none=True), self.args,
                              out.request_id)  # fmt: skip
        out.modality = "image" if inp.images else "text"
        key = self.cache.key(CHAT_ROUTE, chat.cache_key_parts(inp), *_scope(verdict))
        if req.stream:
            deltas, out.cache = self.cache.stream(key, lambda: self.engine.chat_stream(inp))
            stream = events(
                chat.new_completion_id(), int(time.time()), req.model, await primed(deltas)
            )
            headers = {"x-mmo-cache": out.cache, "x-mmo-data-class": verdict.data_class}
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        result, out.cache = await self.cache.answer(key, lambda: self.engine.chat(inp))
        headers = {"x-mmo-cache": out.cache, "x-mmo-data-class": verdict.data_class}
        return JSONResponse(chat.completion_body(req.model, result), headers=headers)

    def _reply_offloaded(self, response: dict[str, Any], stream: bool) -> Response:
        headers = {"x-mmo-cache": "offload"}
        if not stream:
            return JSONResponse(response, headers=headers)
        sse = events(
            str(response.get("id") or chat.new_completion_id()),
            int(response.get("created") or time.time()),
            str(response.get("model") or self.args.name),
            words(chat.offloaded_output(response)),
        )
        return StreamingResponse(sse, media_type="text/event-stream", headers=headers)

    # ------------------------------------------------------------------ embeddings

    async def _embeddings(self, request: Request, out: _Outcome) -> Response:
        req: oa.EmbeddingRequest = oa.parse_model(oa.EmbeddingRequest, await self._body(request))
        self._check_model(req.model)
        embeddings.check_items(req)
        verdict = await self._gate(request, out, req)
        if isinstance(verdict, Offloaded):
            return JSONResponse(verdict.response, headers={"x-mmo-cache": "offload"})
        items = embeddings.embed_items(req, self.args)
        if any(item.inp.image is not None for item in items):
            out.modality = "image"
        answers = await asyncio.gather(
            *(
                self.cache.answer(
                    self.cache.key(EMBED_ROUTE, item.cache_key_parts, *_scope(verdict)),
                    _embed_one(self.engine, item.inp),
                )
                for item in items
            )
        )
        statuses = {status for _, status in answers}
        out.cache = statuses.pop() if len(statuses) == 1 else "miss"
        body = embeddings.embeddings_body(req, [vector for vector, _ in answers])
        return JSONResponse(body, headers={"x-mmo-cache": out.cache})


# ---------------------------------------------------------------------------- builders


def build_mmo_app(
    args: AppArgs,
    *,
    engine_factory: EngineFactory | None = None,
    gateway_factory: GatewayFactory | None = None,
    options: dict[str, Any] | None = None,
) -> Application:
    """The front with the built-in engine inside its replica."""
    deployment: Any = MmoIngress  # a serve.Deployment once decorated
    opts = deployment_options(args, overrides=options)
    return deployment.options(**opts).bind(
        args.to_json_dict(), engine_factory=engine_factory, gateway_factory=gateway_factory
    )


def build_vllm_app(
    args: AppArgs,
    *,
    engine_factory: EngineFactory | None = None,
    gateway_factory: GatewayFactory | None = None,
    options: dict[str, Any] | None = None,
    accelerator: Accelerator = "gpu",
    llm_deployment: LlmDeploymentBuilder | None = None,
) -> Application:
    """The front plus a Ray Serve LLM deployment, its handle bound as ``engine_handle``.

    The LLM deployment runs vLLM with :func:`~mmo_serving.vllm_args.llm_config`'s
    arguments for ``accelerator`` ("cpu": ``mmo up`` on a machine without GPUs); its
    Serve options (the engine's placement group, autoscaling in data-parallel groups) are
    Ray Serve LLM's own. ``llm_deployment`` replaces Ray Serve LLM's builder (tests).
    """
    build = llm_deployment or build_vllm_deployment
    engine = build(llm_config(args, accelerator=accelerator))
    deployment: Any = MmoIngress
    opts = deployment_options(args, overrides=options)
    return deployment.options(**opts).bind(
        args.to_json_dict(),
        engine_handle=engine,
        engine_factory=engine_factory,
        gateway_factory=gateway_factory,
    )


def build_app(
    args: dict[str, Any] | AppArgs,
    *,
    engine_factory: EngineFactory | None = None,
    gateway_factory: GatewayFactory | None = None,
    options: dict[str, Any] | None = None,
    accelerator: Accelerator = "gpu",
) -> Application:
    """The application of ``args.engine``. ``engine_factory``/``gateway_factory`` replace
    the defaults (tests, benchmarks); ``options`` override deployment options.

    ``accelerator`` is what the vLLM engine runs on: "gpu" in a cluster (Serve calls this
    builder with ``args`` only), "cpu" where ``mmo up`` finds no GPU. The built-in engine
    ignores it (its ranks run wherever torch finds a device)."""
    app_args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    if app_args.engine == "vllm":
        return build_vllm_app(
            app_args,
            engine_factory=engine_factory,
            gateway_factory=gateway_factory,
            options=options,
            accelerator=accelerator,
        )
    return build_mmo_app(
        app_args, engine_factory=engine_factory, gateway_factory=gateway_factory, options=options
    )
