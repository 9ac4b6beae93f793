"""The work of the two API routes, without Serve: gateway verdict, cache, engine, answer.

    body (up to maxRequestBytes) -> OpenAI schema -> model name -> gateway.decide
        -> Offloaded: the cloud's answer | Local: cache -> ChatEngine -> JSON or SSE

:class:`Front` is what the Serve ingress (:mod:`mmo_serving.app`) runs for
``POST /v1/chat/completions`` and ``POST /v1/embeddings``; it needs no Ray, so tests drive
it from a plain FastAPI app with a fake engine. Every request goes through
:meth:`Front.answer`: errors as OpenAI JSON, metrics and exactly one audit line
(:mod:`mmo_serving.request_ledger`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from mmo_serving.answer_cache import AnswerCache
from mmo_serving.backend import ChatEngine, EmbedInput
from mmo_serving.config import AppArgs
from mmo_serving.gateway import Gateway, Local, Offloaded, RequestInfo
from mmo_serving.metrics import ServingMetrics
from mmo_serving.openai import chat, embeddings
from mmo_serving.openai import schema as oa
from mmo_serving.openai.body import read_body
from mmo_serving.openai.sse import events, primed
from mmo_serving.request_ledger import Outcome, RequestLedger

CHAT_ROUTE = "/v1/chat/completions"
EMBED_ROUTE = "/v1/embeddings"
ROUTES = (CHAT_ROUTE, EMBED_ROUTE)

Handler = Callable[[Request, Outcome], Awaitable[Response]]


def _embed_one(engine: ChatEngine, item: EmbedInput) -> Callable[[], Awaitable[list[float]]]:
    async def one() -> list[float]:
        (vector,) = await engine.embed([item])
        return vector

    return one


class Front:
    def __init__(
        self, args: AppArgs, gateway: Gateway, engine: ChatEngine, metrics: ServingMetrics
    ) -> None:
        self.args = args
        self.gateway = gateway
        self.engine = engine
        self.cache = AnswerCache(args, metrics)
        self.ledger = RequestLedger(gateway, metrics, args.isolation.mode, ROUTES)

    @property
    def inflight(self) -> dict[str, int]:
        return self.ledger.inflight

    async def answer(self, route: str, request: Request, handler: Handler) -> Response:
        """Run one API request: every exception becomes the OpenAI error body."""
        out = self.ledger.open(route, request)
        resp: Response | None = None
        try:
            resp = await handler(request, out)
        except asyncio.CancelledError:
            self.ledger.cancelled(out)
            raise
        except Exception as exc:
            resp = self.ledger.failed(out, exc)
        finally:
            resp = self.ledger.close(out, request, resp)
        assert resp is not None
        return resp

    async def chat(self, request: Request, out: Outcome) -> Response:
        req: oa.ChatCompletionRequest = oa.parse_model(
            oa.ChatCompletionRequest, await self._body(request)
        )
        self._check_model(req.model)
        verdict = await self._gate(request, out, req)
        if isinstance(verdict, Offloaded):
            return chat.offloaded_reply(verdict.response, req.stream, self.args.name)
        inp = chat.chat_input(req, req.model_dump(mode="json", exclude_none=True), self.args,
                              out.request_id)  # fmt: skip
        out.modality = "image" if inp.images else "text"
        parts = chat.cache_key_parts(inp, self.args)
        key = self.cache.key(CHAT_ROUTE, parts, verdict.data_class, verdict.tenant)
        headers: dict[str, str] = {"x-mmo-data-class": verdict.data_class}
        if req.stream:
            deltas, out.cache = self.cache.stream(key, lambda: self.engine.chat_stream(inp))
            stream = events(
                chat.new_completion_id(), int(time.time()), req.model, await primed(deltas)
            )
            headers["x-mmo-cache"] = out.cache
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        result, out.cache = await self.cache.answer(key, lambda: self.engine.chat(inp))
        headers["x-mmo-cache"] = out.cache
        return JSONResponse(chat.completion_body(req.model, result), headers=headers)

    async def embeddings(self, request: Request, out: Outcome) -> Response:
        req: oa.EmbeddingRequest = oa.parse_model(oa.EmbeddingRequest, await self._body(request))
        self._check_model(req.model)
        embeddings.check_items(req)
        verdict = await self._gate(request, out, req)
        if isinstance(verdict, Offloaded):
            return JSONResponse(verdict.response, headers={"x-mmo-cache": "offload"})
        items = embeddings.embed_items(req, self.args)
        if any(item.inp.image is not None for item in items):
            out.modality = "image"
        scope = (verdict.data_class, verdict.tenant)
        answers = await asyncio.gather(
            *(
                self.cache.answer(
                    self.cache.key(EMBED_ROUTE, item.cache_key_parts, *scope),
                    _embed_one(self.engine, item.inp),
                )
                for item in items
            )
        )
        statuses = {status for _, status in answers}
        out.cache = statuses.pop() if len(statuses) == 1 else "miss"
        body = embeddings.embeddings_body(req, [vector for vector, _ in answers])
        return JSONResponse(body, headers={"x-mmo-cache": out.cache})

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
        self, request: Request, out: Outcome, req: oa.ChatCompletionRequest | oa.EmbeddingRequest
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
        out.decided = True
        if isinstance(verdict, Local | Offloaded):
            out.verdict = verdict
            if isinstance(verdict, Offloaded):
                out.cache = "offload"
            return verdict
        raise oa.ApiError(
            verdict.status, verdict.message, code=verdict.code, param=verdict.param,
            type=verdict.error_type,
        )  # fmt: skip
