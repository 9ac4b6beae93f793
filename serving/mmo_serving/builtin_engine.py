"""The built-in expert-parallel engine behind the :class:`~mmo_serving.backend.ChatEngine`
seam.

Requests are batched here with ``@serve.batch`` (batch size and wait come from AppArgs
and change at run time through ``reconfigure``); the engine answers whole, and the
answer is streamed word by word. ``reconfigure`` also applies a new placement plan
without a restart.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ray import serve

from mmo_serving.backend import ChatDelta, ChatInput, ChatOutput, EmbedInput, FinishReason
from mmo_serving.config import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_MAX_BATCH_SIZE,
    AppArgs,
    BatchingArgs,
    PlacementPlan,
    RuntimeConfig,
)
from mmo_serving.engine.types import (
    EmbeddingRequest,
    Engine,
    ExpertLoad,
    GenerationRequest,
    GenerationResult,
)
from mmo_serving.metrics import serving_metrics
from mmo_serving.openai.sse import words

log = logging.getLogger("mmo_serving.builtin_engine")

CHAT_ROUTE = "/v1/chat/completions"
EMBED_ROUTE = "/v1/embeddings"

MakeEngine = Callable[[AppArgs], "Engine | Awaitable[Engine]"]


class BuiltinChatEngine:
    def __init__(self, engine: Engine, args: AppArgs) -> None:
        self.engine = engine
        self.args = args
        self.metrics = serving_metrics()
        self.plans_applied = 0
        if args.placement is not None:  # the engine started with this plan
            self.plans_applied = 1
            self.metrics.rebalance()
        self.set_batching(args.batching)

    # ------------------------------------------------------------------ ChatEngine

    async def chat(self, inp: ChatInput) -> ChatOutput:
        # pixels are decoded here, so only on a cache miss
        pixels = inp.images[0].to_array() if inp.images else None
        result = await self._generate_batch(
            GenerationRequest(text=inp.prompt, image=pixels, max_new_tokens=inp.max_tokens)
        )
        finish: FinishReason = "length" if result.tokens >= inp.max_tokens else "stop"
        return ChatOutput(result.text, finish, result.prompt_tokens, result.tokens)

    async def chat_stream(self, inp: ChatInput) -> AsyncIterator[ChatDelta]:
        async for delta in words(await self.chat(inp)):
            yield delta

    async def embed(self, items: list[EmbedInput]) -> list[list[float]]:
        def request(item: EmbedInput) -> EmbeddingRequest:
            if item.image is not None:
                return EmbeddingRequest(image=item.image.to_array())
            return EmbeddingRequest(text=item.text or "")

        return list(await asyncio.gather(*(self._embed_batch(request(i)) for i in items)))

    async def check_health(self) -> None:
        engine_check = getattr(self.engine, "check_health", None)
        if engine_check is not None:
            res = engine_check()
            if inspect.isawaitable(res):
                await res

    async def expert_load(self) -> ExpertLoad:
        return await self.engine.expert_load()

    async def close(self) -> None:
        await self.engine.close()

    # ------------------------------------------------------------------ run time

    async def reconfigure(self, cfg: RuntimeConfig) -> None:
        """Apply a new ``RuntimeConfig`` (Serve ``user_config``) without a restart."""
        if cfg.batching is not None:
            self.set_batching(cfg.batching)
            log.info("batching set to %s", cfg.batching)
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

    def set_batching(self, batching: BatchingArgs) -> None:
        batched: tuple[Any, ...] = (self._generate_batch, self._embed_batch)
        for fn in batched:  # @serve.batch adds these setters to the wrapped method
            fn.set_max_batch_size(batching.max_batch_size)
            fn.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    async def describe(self) -> dict[str, Any]:
        """What ``/readyz`` shows of the engine."""
        ranks = None
        info = getattr(self.engine, "rank_info", None)
        if info is not None:
            keep = ("rank", "gpuIds", "device", "backend", "heldExperts")
            ranks = [{k: r[k] for k in keep if k in r} for r in await info()]
        return {
            "engine": type(self.engine).__name__,
            "plansApplied": self.plans_applied,
            "ranks": ranks,
        }

    # ------------------------------------------------------------------ batching

    # the defaults until __init__ sets AppArgs.batching
    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _generate_batch(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        self.metrics.batch(CHAT_ROUTE, len(items))
        results = await self.engine.generate(items)
        self.metrics.generated_tokens(sum(r.tokens for r in results))
        return results

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _embed_batch(self, items: list[EmbeddingRequest]) -> list[list[float]]:
        self.metrics.batch(EMBED_ROUTE, len(items))
        return await self.engine.embed(items)


async def make_default_engine(args: AppArgs) -> Engine:
    """The engine package's factory: expert-parallel for ``num_gpus > 1``, local otherwise,
    INT8 when ``args.quantization == "int8"``."""
    from mmo_serving.engine import make_engine

    # In a replica Ray is initialised: ask for the local engine explicitly with one GPU.
    engine = make_engine(args, local=args.num_gpus == 1)
    ready = getattr(engine, "ready", None)
    if ready is not None:
        await ready()  # ranks loaded and checked: only then is the replica healthy
    return engine


@dataclass(frozen=True)
class BuiltinEngineFactory:
    """An engine factory of the front for the built-in engine; ``make`` builds the
    :class:`Engine` (tests pass a fake one)."""

    make: MakeEngine = make_default_engine

    async def __call__(self, args: AppArgs, engine_handle: Any = None) -> BuiltinChatEngine:
        made = self.make(args)
        engine: Engine = await made if inspect.isawaitable(made) else made
        return BuiltinChatEngine(engine, args)
