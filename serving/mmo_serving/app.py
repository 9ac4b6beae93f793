"""The Ray Serve application: ``mmo_serving.app:build_app`` (serveConfigV2 import path).

One ingress deployment (FastAPI via ``serve.ingress``) is the front for every engine:

    HTTP -> OpenAI schema -> gateway.decide -> cache -> ChatEngine (built-in or vLLM)

The two API routes' work is :class:`~mmo_serving.front.Front` (no Serve in it); this
module holds the deployment's lifecycle, the other routes and the app builders.

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

import contextlib
import inspect
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import Application

from mmo_serving.backend import ChatEngine
from mmo_serving.config import AppArgs, RuntimeConfig
from mmo_serving.deployment import INGRESS_DEPLOYMENT, deployment_options
from mmo_serving.engines import EngineFactory, Tunable, default_engine_factory
from mmo_serving.expert_load import ExpertLoadRecorder, expert_load_document, no_expert_load
from mmo_serving.front import CHAT_ROUTE, EMBED_ROUTE, Front
from mmo_serving.gateway import Gateway, build_gateway
from mmo_serving.metrics import serving_metrics
from mmo_serving.openai import schema as oa
from mmo_serving.openai.errors import error_response, install_error_handlers
from mmo_serving.vllm_args import Accelerator, llm_config
from mmo_serving.vllm_engine import build_vllm_deployment

GatewayFactory = Callable[[AppArgs], Gateway]
# an LLMConfig dict -> the bound engine deployment
LlmDeploymentBuilder = Callable[[dict[str, Any]], Application]


def _audit_unrouted(request: Request, err: oa.ApiError) -> None:
    """An unknown route or a wrong method (404, 405) is a request too: its audit line."""
    try:
        ingress = serve.get_replica_context().servable_object
    except Exception:  # outside a Serve replica: no gateway to write it
        return
    front = getattr(ingress, "front", None)
    if isinstance(front, Front):
        front.ledger.unrouted(request, err.status, err.code)


# ``serve.ingress`` pickles the routes and the handlers when the class is decorated:
# every global they use must exist before it.
api = FastAPI(title="mmo", docs_url=None, redoc_url=None, openapi_url=None)
install_error_handlers(api, on_error=_audit_unrouted)


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
        metrics = serving_metrics()
        self.gateway: Gateway = (gateway_factory or build_gateway)(self.args)
        made = (engine_factory or default_engine_factory)(self.args, engine_handle)
        self.engine: ChatEngine = await made if inspect.isawaitable(made) else made
        self.front = Front(self.args, self.gateway, self.engine, metrics)
        self.expert_load = ExpertLoadRecorder(self.engine, metrics, lambda: self.front.inflight)

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
            return error_response(no_expert_load(self.args.engine))
        return JSONResponse(expert_load_document(self.args, load))

    @api.post(CHAT_ROUTE)
    async def chat_completions(self, request: Request) -> Response:
        return await self.front.answer(CHAT_ROUTE, request, self.front.chat)

    @api.post(EMBED_ROUTE)
    async def embeddings(self, request: Request) -> Response:
        return await self.front.answer(EMBED_ROUTE, request, self.front.embeddings)


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
