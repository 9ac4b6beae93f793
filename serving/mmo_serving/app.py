"""The Ray Serve application: ``mmo_serving.app:build_app`` (serveConfigV2 import path).

One ingress deployment (FastAPI via ``serve.ingress``) owns the engine:

    HTTP -> schema check -> gateway.decide (isolation) -> cache -> @serve.batch -> engine

Routes: ``POST /v1/chat/completions`` (text + inline image, ``stream``), ``POST
/v1/embeddings`` (text or image), ``GET /v1/models``, ``GET /healthz``, ``GET /readyz``,
``GET /v1/expert-load``. Errors are OpenAI-style JSON (:mod:`mmo_serving.openai_schema`).

The deployment's ``user_config`` is a :class:`~mmo_serving.config.RuntimeConfig`
(batch size, batch wait, placement plan), applied by ``reconfigure`` without restarting
the replica. With ``num_gpus > 1`` the replica reserves a STRICT_PACK placement group
(one GPU bundle per rank) and runs the expert-parallel engine; otherwise the local one.
"""

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application

from mmo_serving import openai_schema as oa
from mmo_serving.cache import CacheScope, ResponseCache, cache_key
from mmo_serving.config import AppArgs, PlacementPlan, RuntimeConfig
from mmo_serving.engine.types import (
    EmbeddingRequest,
    Engine,
    ExpertLoad,
    GenerationRequest,
    GenerationResult,
)
from mmo_serving.gateway_types import (
    DATA_CLASS_HEADER,
    DATA_CLASSES,
    DEFAULT_TENANT,
    TENANT_HEADER,
    Decision,
    Gateway,
    RequestInfo,
    load_gateway,
)
from mmo_serving.images import RawImage, parse_data_url
from mmo_serving.metrics import ServingMetrics, serving_metrics

log = logging.getLogger("mmo_serving.app")

INGRESS_DEPLOYMENT = "mmo-ingress"
CHAT_ROUTE = "/v1/chat/completions"
EMBED_ROUTE = "/v1/embeddings"
ROUTES = (CHAT_ROUTE, EMBED_ROUTE)
EXPERT_METRICS_INTERVAL_S = 5.0
# Gauges are set again well within Ray's metrics report interval (see
# mmo_serving.metrics.METRICS_REPORT_INTERVAL_MS) so that every scrape sees them.
GAUGE_REFRESH_S = 0.5
MAX_TENANT_LEN = 64

EngineFactory = Callable[[AppArgs], "Engine | Awaitable[Engine]"]
GatewayFactory = Callable[[AppArgs], Gateway]

api = FastAPI(title="mmo", docs_url=None, redoc_url=None, openapi_url=None)


async def default_engine_factory(args: AppArgs) -> Engine:
    """The engine package's factory: expert-parallel for ``num_gpus > 1``, local otherwise,
    INT8 when ``args.quantization == "int8"``."""
    from mmo_serving.engine import make_engine

    # In a replica Ray is initialised: ask for the local engine explicitly with one GPU.
    engine = make_engine(args, local=args.num_gpus == 1)
    ready = getattr(engine, "ready", None)
    if ready is not None:
        await ready()  # ranks loaded and checked: only then is the replica healthy
    return engine


# ---------------------------------------------------------------------------- helpers


def _at(tokens: list[list[list[int]]], layer: int, expert: int, rank: int) -> int:
    try:
        return tokens[layer][expert][rank]
    except IndexError:
        return 0


def _bind(
    fn: Callable[[Any], Awaitable[Any]], make: Callable[[], Any]
) -> Callable[[], Awaitable[Any]]:
    """``fn(make())`` later: the argument is built only when the cache misses."""
    return lambda: fn(make())


def _image_embedding(image: RawImage) -> Callable[[], EmbeddingRequest]:
    return lambda: EmbeddingRequest(image=image.to_array())


def _text_embedding(text: str) -> Callable[[], EmbeddingRequest]:
    return lambda: EmbeddingRequest(text=text)


def _b64_floats(values: list[float]) -> str:
    import base64
    import struct

    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def _collect_chat(
    req: oa.ChatCompletionRequest,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Every (text, param) and (image url, param) of the conversation, in order."""
    texts: list[tuple[str, str]] = []
    images: list[tuple[str, str]] = []
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, str):
            texts.append((msg.content, f"messages[{i}].content"))
            continue
        for j, part in enumerate(msg.content):
            param = f"messages[{i}].content[{j}]"
            if isinstance(part, oa.TextPart):
                texts.append((part.text, param))
            else:
                images.append((part.image_url.url, f"{param}.image_url.url"))
    return texts, images


def _prompt(req: oa.ChatCompletionRequest) -> str:
    """The question the model answers: the text of the last user message."""
    for msg in reversed(req.messages):
        if msg.role != "user":
            continue
        if isinstance(msg.content, str):
            return msg.content.strip()
        return " ".join(p.text.strip() for p in msg.content if isinstance(p, oa.TextPart)).strip()
    raise oa.ApiError(
        400,
        "messages: at least one message with role 'user' is required",
        code="invalid_schema",
        param="messages",
    )


def _embedding_part(item: oa.EmbeddingItem, param: str) -> tuple[str | None, str | None]:
    if isinstance(item, str):
        return item, None
    if item.type == "text":
        if item.text is None:
            raise oa.ApiError(
                400,
                f"{param}.text: required when type is 'text'",
                code="invalid_schema",
                param=f"{param}.text",
            )
        return item.text, None
    if item.image_url is None:
        raise oa.ApiError(
            400,
            f"{param}.image_url: required when type is 'image_url'",
            code="invalid_schema",
            param=f"{param}.image_url",
        )
    return None, item.image_url.url


async def _sse(
    completion_id: str, created: int, model: str, text: str, finish: str
) -> AsyncIterator[str]:
    """OpenAI chunk stream: a role chunk, one chunk per word, a finish chunk, [DONE].

    The engine returns whole answers; the words are streamed as they are sent.
    """

    def chunk(delta: oa.ChunkDelta, finish_reason: Any = None) -> str:
        body = oa.ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=model,
            choices=[oa.ChunkChoice(delta=delta, finish_reason=finish_reason)],
        )
        return f"data: {body.model_dump_json(exclude_none=False)}\n\n"

    yield chunk(oa.ChunkDelta(role="assistant", content=""))
    words = text.split(" ")
    for i, word in enumerate(words):
        yield chunk(oa.ChunkDelta(content=word if i == 0 else " " + word))
    yield chunk(oa.ChunkDelta(), finish_reason=finish)
    yield "data: [DONE]\n\n"


# Helpers come before the ingress class: ``serve.ingress`` pickles the routes when the
# class is decorated, so every global they use must already exist at that point.


class _Outcome:
    """What one request did, for the metrics recorded when it ends."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.code = 200
        self.modality = "text"
        self.cache = "off"
        self.start = time.perf_counter()
        self.request_id = ""


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress(api)
class MmoIngress:
    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        args: dict[str, Any],
        engine_factory: EngineFactory | None = None,
        gateway_factory: GatewayFactory | None = None,
    ) -> None:
        self.args = AppArgs.model_validate(args)
        self.mode = self.args.isolation.mode
        self.started_at = time.time()
        self.created = int(self.started_at)
        self.metrics: ServingMetrics = serving_metrics()
        self.inflight = dict.fromkeys(ROUTES, 0)
        self.gateway: Gateway = (gateway_factory or load_gateway)(self.args)
        self.cache: ResponseCache[Any] | None = None
        if self.args.cache.enabled:
            self.cache = ResponseCache(self.args.cache.max_entries, self.args.cache.ttl_seconds)
        self._apply_batching(
            self.args.batching.max_batch_size, self.args.batching.batch_wait_timeout_s
        )
        made = (engine_factory or default_engine_factory)(self.args)
        self.engine: Engine = await made if inspect.isawaitable(made) else made
        self._last_expert_tokens: list[list[list[int]]] | None = None
        self._expert_lock = asyncio.Lock()
        self._balancedness: dict[int, float] = {}
        self._poller = asyncio.get_running_loop().create_task(self._poll_expert_load())
        self._gauges = asyncio.get_running_loop().create_task(self._refresh_gauges())
        self.plans_applied = 0
        if self.args.placement is not None:  # the engine started with this plan
            self.plans_applied = 1
            self.metrics.rebalance()

    # ------------------------------------------------------------------ lifecycle

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new ``RuntimeConfig`` (Serve ``user_config``) without a restart."""
        cfg = RuntimeConfig.model_validate(user_config or {})
        if cfg.batching is not None:
            self._apply_batching(cfg.batching.max_batch_size, cfg.batching.batch_wait_timeout_s)
            log.info(
                "batching set to max_batch_size=%d batch_wait_timeout_s=%s",
                cfg.batching.max_batch_size,
                cfg.batching.batch_wait_timeout_s,
            )
        if cfg.placement is not None:
            await self._apply_plan(cfg.placement)

    async def _apply_plan(self, plan: PlacementPlan) -> None:
        if plan.num_gpus != self.args.num_gpus:
            raise ValueError(
                f"placement.numGpus={plan.num_gpus} but this replica runs "
                f"{self.args.num_gpus} rank(s)"
            )
        if self.args.placement is not None and plan == self.args.placement:
            return  # the plan the engine started with
        await self.engine.update_plan(plan)
        self.args.placement = plan
        self.plans_applied += 1
        self.metrics.rebalance()
        log.info("placement plan applied (balancedness %.3f)", plan.balancedness)

    def _apply_batching(self, max_batch_size: int, wait_s: float) -> None:
        batched: tuple[Any, ...] = (self._generate_batch, self._embed_batch)
        for fn in batched:  # @serve.batch adds these setters to the wrapped method
            fn.set_max_batch_size(max_batch_size)
            fn.set_batch_wait_timeout_s(wait_s)

    async def __del__(self) -> None:
        self._poller.cancel()
        self._gauges.cancel()
        with contextlib.suppress(Exception):
            await self.engine.close()
        close = getattr(self.gateway, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                res = close()
                if inspect.isawaitable(res):
                    await res

    async def check_health(self) -> None:
        """Serve's replica health check: a lost engine rank makes Serve replace us."""
        if self._poller.done() and not self._poller.cancelled():
            exc = self._poller.exception()
            if exc is not None:
                raise RuntimeError(f"expert-load poller died: {exc!r}")
        engine_check = getattr(self.engine, "check_health", None)
        if engine_check is not None:
            res = engine_check()
            if inspect.isawaitable(res):
                await res

    async def _ranks(self) -> list[dict[str, Any]] | None:
        info = getattr(self.engine, "rank_info", None)
        if info is None:
            return None
        keep = ("rank", "gpuIds", "device", "backend", "heldExperts")
        return [{k: r[k] for k in keep if k in r} for r in await info()]

    # ------------------------------------------------------------------ batching

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        self.metrics.batch(CHAT_ROUTE, len(items))
        results = await self.engine.generate(items)
        self.metrics.generated_tokens(sum(r.tokens for r in results))
        return results

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _embed_batch(self, items: list[EmbeddingRequest]) -> list[list[float]]:
        self.metrics.batch(EMBED_ROUTE, len(items))
        return await self.engine.embed(items)

    # ------------------------------------------------------------------ request plumbing

    def _enter(self, route: str) -> _Outcome:
        self.inflight[route] += 1
        self.metrics.queue_depth(route, self.inflight[route])
        return _Outcome(route)

    def _leave(self, out: _Outcome) -> None:
        self.inflight[out.route] -= 1
        self.metrics.queue_depth(out.route, self.inflight[out.route])
        self.metrics.request(
            route=out.route,
            code=out.code,
            mode=self.mode,
            modality=out.modality,
            cache=out.cache,
            seconds=time.perf_counter() - out.start,
        )

    def _check_model(self, model: str) -> None:
        if model != self.args.name:
            raise oa.ApiError(
                404,
                f"model {model!r} does not exist; this endpoint serves {self.args.name!r}",
                code="model_not_found",
                param="model",
            )

    def _caller(self, request: Request) -> tuple[str, dict[str, str]]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        data_class = headers.get(DATA_CLASS_HEADER)
        if data_class is not None and data_class.strip().lower() not in DATA_CLASSES:
            raise oa.ApiError(
                400,
                f"header X-Data-Class: {data_class!r} is not one of {', '.join(DATA_CLASSES)}",
                code="invalid_header",
                param="X-Data-Class",
            )
        tenant = headers.get(TENANT_HEADER, DEFAULT_TENANT)
        if not tenant or len(tenant) > MAX_TENANT_LEN:
            raise oa.ApiError(
                400,
                f"header X-Tenant: must be 1 to {MAX_TENANT_LEN} characters",
                code="invalid_header",
                param="X-Tenant",
            )
        return tenant, headers

    async def _decide(
        self,
        request: Request,
        request_id: str,
        route: str,
        req: oa.ChatCompletionRequest | oa.EmbeddingRequest,
        texts: list[str],
        image_urls: list[str],
        stream: bool,
    ) -> tuple[Decision, str]:
        tenant, headers = self._caller(request)
        info = RequestInfo(
            request_id=request_id,
            route=route,
            tenant=tenant,
            headers=headers,
            texts=texts,
            image_urls=image_urls,
            # the validated request, not the raw JSON: fields the schema ignores never
            # reach the gateway (nor, through an offload, the cloud endpoint)
            body=req.model_dump(mode="json", exclude_none=True),
            queue_depth=self.inflight[route],
            stream=stream,
        )
        decision = await self.gateway.decide(info)
        if decision.action == "refuse":
            raise oa.ApiError(
                decision.status,
                decision.reason or "refused by the isolation policy",
                code="policy_refused",
                type="policy_error",
            )
        return decision, tenant

    def _scope(self, decision: Decision, tenant: str) -> CacheScope:
        return CacheScope(self.args.model_version, decision.data_class, tenant)

    def _image(self, url: str, param: str) -> RawImage:
        if "image" not in self.args.modalities:
            raise oa.ApiError(
                400,
                f"{param}: model {self.args.name!r} does not accept images "
                f"(modalities: {', '.join(self.args.modalities)})",
                code="unsupported_modality",
                param=param,
            )
        return parse_data_url(url, max_bytes=self.args.max_image_bytes, param=param)

    # ------------------------------------------------------------------ routes

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> Response:
        await self.check_health()
        return JSONResponse(
            {
                "status": "ready",
                "model": self.args.name,
                "modelVersion": self.args.model_version,
                "engine": type(self.engine).__name__,
                "numGpus": self.args.num_gpus,
                "quantization": self.args.quantization,
                "mode": self.mode,
                "plansApplied": self.plans_applied,
                "startedAt": self.started_at,
                "ranks": await self._ranks(),
            }
        )

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        card = oa.ModelCard(id=self.args.name, created=self.created)
        return oa.ModelList(data=[card]).model_dump()

    @api.get("/v1/expert-load")
    async def expert_load(self) -> Response:
        load = await self._record_expert_load()
        doc = load.to_json_dict()
        doc["model"] = self.args.name
        doc["placement"] = (
            self.args.placement.model_dump(mode="json", by_alias=True)
            if self.args.placement is not None
            else None
        )
        return JSONResponse(doc)

    @api.post(CHAT_ROUTE)
    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(CHAT_ROUTE, request, self._chat)

    @api.post(EMBED_ROUTE)
    async def embeddings(self, request: Request) -> Response:
        return await self._answer(EMBED_ROUTE, request, self._embeddings)

    async def _answer(
        self,
        route: str,
        request: Request,
        handler: Callable[[Request, _Outcome], Awaitable[Response]],
    ) -> Response:
        """Run one API request: errors as OpenAI JSON, metrics. The request id is the
        client's ``X-Request-Id`` or the one Serve's proxy gave the request."""
        out = self._enter(route)
        out.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            resp = await handler(request, out)
        except oa.ApiError as exc:
            out.code = exc.status
            resp = JSONResponse(exc.body(), status_code=exc.status)
        except Exception:
            log.exception("%s failed", route)
            out.code = 500
            err = oa.ApiError(500, "internal error", code="internal_error", type="server_error")
            resp = JSONResponse(err.body(), status_code=500)
        finally:
            self._leave(out)
        return resp  # Serve's proxy puts the same x-request-id on the response

    # ------------------------------------------------------------------ chat

    async def _chat(self, request: Request, out: _Outcome) -> Response:
        raw = await request.body()
        req: oa.ChatCompletionRequest = oa.parse_model(oa.ChatCompletionRequest, raw)
        self._check_model(req.model)
        texts, images = _collect_chat(req)
        decision, tenant = await self._decide(
            request,
            out.request_id,
            CHAT_ROUTE,
            req,
            [t for t, _ in texts],
            [u for u, _ in images],
            req.stream,
        )
        if decision.action == "offload" and decision.response is not None:
            out.cache = "offload"
            return self._reply_offloaded(decision.response, req.stream)
        if len(images) > 1:
            raise oa.ApiError(
                400,
                f"{images[1][1]}: this model takes at most one image per request, "
                f"got {len(images)}",
                code="too_many_images",
                param=images[1][1],
            )
        image = self._image(*images[0]) if images else None
        out.modality = "image" if image is not None else "text"
        prompt = _prompt(req)
        max_new = min(req.requested_tokens() or self.args.max_new_tokens, self.args.max_new_tokens)
        canonical = {
            "prompt": prompt,
            "image": [image.mime, image.sha256] if image is not None else None,
            "max_new_tokens": max_new,
        }

        def generate() -> Awaitable[GenerationResult]:
            # pixels are decoded only on a cache miss
            pixels = image.to_array() if image is not None else None
            return self._generate_batch(
                GenerationRequest(text=prompt, image=pixels, max_new_tokens=max_new)
            )

        result = await self._cached(
            out, CHAT_ROUTE, canonical, self._scope(decision, tenant), generate
        )
        finish = "length" if result.tokens >= max_new else "stop"
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        headers = {"x-mmo-cache": out.cache, "x-mmo-data-class": decision.data_class}
        if req.stream:
            return StreamingResponse(
                _sse(completion_id, self.created_now(), req.model, result.text, finish),
                media_type="text/event-stream",
                headers=headers,
            )
        prompt_tokens = result.prompt_tokens
        body = oa.ChatCompletion(
            id=completion_id,
            created=self.created_now(),
            model=req.model,
            choices=[
                oa.Choice(
                    index=0,
                    message=oa.AssistantMessage(content=result.text),
                    finish_reason=finish,
                )
            ],
            usage=oa.Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=result.tokens,
                total_tokens=prompt_tokens + result.tokens,
            ),
        )
        return JSONResponse(body.model_dump(), headers=headers)

    @staticmethod
    def created_now() -> int:
        return int(time.time())

    async def _cached(
        self,
        out: _Outcome,
        route: str,
        canonical: Any,
        scope: CacheScope,
        compute: Callable[[], Awaitable[Any]],
    ) -> Any:
        if self.cache is None:
            out.cache = "off"
            return await compute()
        key = cache_key(route, canonical, scope)
        hit = self.cache.get(key)
        if hit is not None:
            out.cache = "hit"
            self.metrics.cache_hit()
            return hit
        out.cache = "miss"
        self.metrics.cache_miss()
        value = await compute()
        self.cache.put(key, value)
        return value

    def _reply_offloaded(self, response: dict[str, Any], stream: bool) -> Response:
        headers = {"x-mmo-cache": "offload"}
        if not stream:
            return JSONResponse(response, headers=headers)
        choice = (response.get("choices") or [{}])[0]
        text = str((choice.get("message") or {}).get("content") or "")
        finish = choice.get("finish_reason") or "stop"
        return StreamingResponse(
            _sse(
                str(response.get("id") or f"chatcmpl-{uuid.uuid4().hex}"),
                int(response.get("created") or time.time()),
                str(response.get("model") or self.args.name),
                text,
                finish if finish in ("stop", "length") else "stop",
            ),
            media_type="text/event-stream",
            headers=headers,
        )

    # ------------------------------------------------------------------ embeddings

    async def _embeddings(self, request: Request, out: _Outcome) -> Response:
        raw = await request.body()
        req: oa.EmbeddingRequest = oa.parse_model(oa.EmbeddingRequest, raw)
        self._check_model(req.model)
        items = req.items()
        texts: list[str] = []
        urls: list[str] = []
        for i, item in enumerate(items):
            param = f"input[{i}]" if isinstance(req.input, list) else "input"
            text, url = _embedding_part(item, param)
            if text is not None:
                texts.append(text)
            if url is not None:
                urls.append(url)
        decision, tenant = await self._decide(
            request, out.request_id, EMBED_ROUTE, req, texts, urls, False
        )
        if decision.action == "offload" and decision.response is not None:
            out.cache = "offload"
            return JSONResponse(decision.response, headers={"x-mmo-cache": "offload"})
        scope = self._scope(decision, tenant)
        jobs = []
        subs: list[_Outcome] = []
        for i, item in enumerate(items):
            param = f"input[{i}]" if isinstance(req.input, list) else "input"
            text, url = _embedding_part(item, param)
            if url is not None:
                image = self._image(url, f"{param}.image_url.url")
                out.modality = "image"
                canonical: dict[str, Any] = {"image": [image.mime, image.sha256]}
                make = _image_embedding(image)
            else:
                canonical = {"text": text}
                make = _text_embedding(text or "")
            sub = _Outcome(EMBED_ROUTE)
            subs.append(sub)
            jobs.append(
                self._cached(sub, EMBED_ROUTE, canonical, scope, _bind(self._embed_batch, make))
            )
        vectors = await asyncio.gather(*jobs)
        if self.cache is None:
            out.cache = "off"
        else:
            out.cache = "hit" if all(sub.cache == "hit" for sub in subs) else "miss"
        data = []
        for i, vec in enumerate(vectors):
            emb: Any = [float(x) for x in vec]
            if req.encoding_format == "base64":
                emb = _b64_floats(emb)
            data.append({"object": "embedding", "index": i, "embedding": emb})
        body = {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }
        return JSONResponse(body, headers={"x-mmo-cache": out.cache})

    # ------------------------------------------------------------------ expert load

    async def _record_expert_load(self) -> ExpertLoad:
        """Read the engine's expert load; export the token deltas and balancedness."""
        async with self._expert_lock:
            load = await self.engine.expert_load()
            last = self._last_expert_tokens
            for layer in range(load.num_layers):
                for expert in range(load.num_experts):
                    for rank in range(load.num_ranks):
                        now = load.tokens[layer][expert][rank]
                        before = 0 if last is None else _at(last, layer, expert, rank)
                        if now > before:
                            self.metrics.expert_tokens(layer, expert, rank, now - before)
                self._balancedness[layer] = load.balancedness(layer)
                self.metrics.balancedness(layer, self._balancedness[layer])
            self._last_expert_tokens = load.tokens
            return load

    async def _refresh_gauges(self) -> None:
        while True:
            await asyncio.sleep(GAUGE_REFRESH_S)
            for route, depth in self.inflight.items():
                self.metrics.queue_depth(route, depth)
            for layer, value in self._balancedness.items():
                self.metrics.balancedness(layer, value)

    async def _poll_expert_load(self) -> None:
        while True:
            await asyncio.sleep(EXPERT_METRICS_INTERVAL_S)
            try:
                await self._record_expert_load()
            except Exception:
                log.exception("reading the expert load failed")


# ---------------------------------------------------------------------------- builder


def deployment_options(args: AppArgs) -> dict[str, Any]:
    """Serve deployment options from AppArgs (resources, autoscaling, user_config)."""
    from mmo_serving.engine.resources import (
        PLACEMENT_STRATEGY,
        placement_group_bundles,
        replica_actor_options,
    )

    auto = args.autoscaling
    opts: dict[str, Any] = {
        "max_ongoing_requests": auto.max_ongoing_requests,
        "autoscaling_config": auto.serve_autoscaling_config(),
        "user_config": RuntimeConfig(batching=args.batching).model_dump(
            mode="json", by_alias=True, exclude_none=True
        ),
        "health_check_period_s": 10,
    }
    if args.num_gpus > 1:
        opts["ray_actor_options"] = dict(replica_actor_options())
        opts["placement_group_bundles"] = placement_group_bundles(args.num_gpus)
        opts["placement_group_strategy"] = PLACEMENT_STRATEGY
    else:
        opts["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 1}
    return opts


def build_app(
    args: dict[str, Any] | AppArgs,
    *,
    engine_factory: EngineFactory | None = None,
    gateway_factory: GatewayFactory | None = None,
    options: dict[str, Any] | None = None,
) -> Application:
    """Validate AppArgs and bind the ingress deployment.

    ``engine_factory``/``gateway_factory`` replace the defaults (tests, benchmarks);
    ``options`` overrides deployment options (e.g. ``ray_actor_options`` on a machine
    without GPUs).
    """
    app_args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    opts = deployment_options(app_args)
    opts.update(options or {})
    deployment: Any = MmoIngress  # a serve.Deployment once decorated
    return deployment.options(**opts).bind(
        app_args.to_json_dict(), engine_factory=engine_factory, gateway_factory=gateway_factory
    )
