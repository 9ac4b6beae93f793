"""Which engine the front gets: the engine factory and what an engine may add.

An engine factory is ``(args, engine_handle) -> ChatEngine`` (or an awaitable of one);
``engine_handle`` is the Serve handle of a separate engine deployment (vLLM), None for
the built-in engine, which runs inside the front's replica.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from mmo_serving.backend import ChatEngine
from mmo_serving.builtin_engine import BuiltinEngineFactory
from mmo_serving.config import AppArgs, RuntimeConfig

EngineFactory = Callable[[AppArgs, Any], "ChatEngine | Awaitable[ChatEngine]"]


@runtime_checkable
class Tunable(Protocol):
    """An engine that applies ``user_config`` at run time and describes itself in
    ``/readyz`` (the built-in one)."""

    async def reconfigure(self, cfg: RuntimeConfig) -> None: ...

    async def describe(self) -> dict[str, Any]: ...


def default_engine_factory(args: AppArgs, engine_handle: Any) -> ChatEngine | Awaitable[Any]:
    if args.engine == "vllm":
        from mmo_serving.vllm_engine import VllmChatEngine

        engine: ChatEngine = VllmChatEngine(engine_handle, args)
        return engine
    return BuiltinEngineFactory()(args, engine_handle)
