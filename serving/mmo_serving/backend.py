"""The seam between mmo's HTTP front and the engine that runs the model.

The front (routes, gateway, cache, audit, ``mmo_*`` metrics) is the same for every
engine; what differs is behind a :class:`ChatEngine`:

- ``mmo``: the built-in expert-parallel engine (``builtin://`` models), batched with
  ``@serve.batch``; it answers whole and streams the answer word by word.
- ``vllm``: Ray Serve LLM running vLLM (real checkpoints), reached through a deployment
  handle; it streams tokens as they are decoded.

Pure: no ray, no torch, no vllm.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from mmo_serving.engine.types import ExpertLoad
    from mmo_serving.images import RawImage

FinishReason = Literal["stop", "length"]


class EngineUnsupported(Exception):
    """The engine cannot do this (e.g. embeddings on a model without an embedding head);
    the front answers 400 with this message."""


@dataclass(frozen=True)
class ChatInput:
    """One chat request the gateway let through, ready for an engine.

    ``body`` is the validated OpenAI request (schema fields only, as JSON): an engine that
    speaks OpenAI (vLLM) takes the whole conversation from it. ``prompt`` and ``images``
    are what the built-in model reads (the last user text, the decoded inline images).
    """

    body: dict[str, Any]
    prompt: str
    images: list[RawImage] = field(default_factory=list)
    max_tokens: int = 8
    request_id: str = ""


@dataclass(frozen=True)
class ChatOutput:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ChatDelta:
    """A piece of a streamed answer: new text since the previous delta. The last delta
    carries ``finish_reason`` and the token counts."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class EmbedInput:
    """Exactly one of text or an inline image."""

    text: str | None = None
    image: RawImage | None = None


class ChatEngine(Protocol):
    """What the front needs of an engine."""

    async def chat(self, inp: ChatInput) -> ChatOutput: ...

    def chat_stream(self, inp: ChatInput) -> AsyncIterator[ChatDelta]: ...

    async def embed(self, items: list[EmbedInput]) -> list[list[float]]: ...

    async def check_health(self) -> None: ...

    async def expert_load(self) -> ExpertLoad | None:
        """Per-layer, per-expert, per-rank token counts, or None when the engine does
        not report them."""
        ...

    async def close(self) -> None: ...
