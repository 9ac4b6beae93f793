"""Server-sent events of a chat completion, from any engine's :class:`ChatDelta` pieces.

A role chunk, one chunk per delta, a finish chunk with the finish reason, ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from mmo_serving.backend import ChatDelta, ChatOutput
from mmo_serving.openai import schema as oa


async def words(output: ChatOutput) -> AsyncIterator[ChatDelta]:
    """A whole answer as deltas, one per word (the built-in engine, cache hits and
    offloaded answers stream this way)."""
    for i, word in enumerate(output.text.split(" ")):
        yield ChatDelta(word if i == 0 else " " + word)
    yield ChatDelta(
        "",
        finish_reason=output.finish_reason,
        prompt_tokens=output.prompt_tokens,
        completion_tokens=output.completion_tokens,
    )


async def events(
    completion_id: str, created: int, model: str, deltas: AsyncIterator[ChatDelta]
) -> AsyncIterator[str]:
    def chunk(delta: oa.ChunkDelta, finish_reason: Any = None) -> str:
        body = oa.ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=model,
            choices=[oa.ChunkChoice(delta=delta, finish_reason=finish_reason)],
        )
        return f"data: {body.model_dump_json(exclude_none=False)}\n\n"

    yield chunk(oa.ChunkDelta(role="assistant", content=""))
    async for delta in deltas:
        if delta.text or delta.finish_reason is None:
            yield chunk(oa.ChunkDelta(content=delta.text))
        if delta.finish_reason is not None:
            yield chunk(oa.ChunkDelta(), finish_reason=delta.finish_reason)
    yield "data: [DONE]\n\n"


async def primed(deltas: AsyncIterator[ChatDelta]) -> AsyncIterator[ChatDelta]:
    """The stream with its first delta already computed: an engine that fails before
    its first token is answered as a JSON error, not a broken stream."""
    it = deltas.__aiter__()
    first = await it.__anext__()

    async def rest() -> AsyncIterator[ChatDelta]:
        yield first
        async for delta in it:
            yield delta

    return rest()


async def stored_when_complete(
    deltas: AsyncIterator[ChatDelta], store: Callable[[ChatOutput], None]
) -> AsyncIterator[ChatDelta]:
    """The stream as it comes, and ``store(output)`` once the last delta has passed."""
    parts: list[str] = []
    async for delta in deltas:
        parts.append(delta.text)
        yield delta
        if delta.finish_reason is not None:
            store(
                ChatOutput(
                    "".join(parts),
                    delta.finish_reason,
                    delta.prompt_tokens or 0,
                    delta.completion_tokens or 0,
                )
            )
