"""``engine: vllm``: Ray Serve LLM running vLLM, behind mmo's front.

Two pieces:

- :func:`build_vllm_deployment` binds Ray Serve LLM's ``LLMServer`` deployment from an
  ``LLMConfig`` dict; the app passes the bound deployment to its ingress, where Serve
  turns it into a ``DeploymentHandle``.
- :class:`VllmChatEngine` is the :class:`~mmo_serving.backend.ChatEngine` the ingress
  uses with that handle. It sends ``LLMServer`` the OpenAI request the front validated
  (``ChatInput.body``: the whole conversation, ``image_url`` parts included) as vLLM's
  ``ChatCompletionRequest``, and turns what comes back into ``ChatOutput`` (whole
  answers) or ``ChatDelta`` (streamed tokens, as vLLM decodes them).

``LLMServer.chat`` is an async generator on the handle (``handle.options(stream=True)``):
a ``ChatCompletionResponse`` for a whole answer, or lists of server-sent-event strings
(``"data: {chunk json}\\n\\n"``, then ``"data: [DONE]\\n\\n"``) for a stream; an
``ErrorResponse`` when vLLM refuses the request. Ray Serve LLM groups stream events every
``experimental_configs.stream_batching_interval_ms`` (50 ms by default); 0 sends each
token as decoded.

Ray and vLLM are imported only when a request type is built or a deployment is bound,
i.e. inside a Ray process that has them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from mmo_serving.backend import (
    ChatDelta,
    ChatInput,
    ChatOutput,
    EmbedInput,
    EngineUnsupported,
    FinishReason,
)
from mmo_serving.config import AppArgs

if TYPE_CHECKING:
    from ray.serve import Application

    from mmo_serving.engine.types import ExpertLoad

DONE = "[DONE]"
# vLLM's finish reasons that are not OpenAI's stop/length: all end the answer normally
# from the client's point of view except "length".
_LENGTH = frozenset({"length"})


class VllmError(RuntimeError):
    """vLLM failed a request (the front answers 500); ``status`` is vLLM's."""

    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class VllmRefused(EngineUnsupported):
    """vLLM refused the request (a 4xx: e.g. a prompt longer than ``max_model_len``):
    the front answers 400 with vLLM's message."""

    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


# ---------------------------------------------------------------------------- pure helpers


def chat_request_body(inp: ChatInput, model_id: str, *, stream: bool) -> dict[str, Any]:
    """The JSON of vLLM's ``ChatCompletionRequest`` for one front request.

    The conversation and sampling fields come from the validated body; the served model
    id, the token budget the front granted and the stream flag are set here. A stream
    asks for usage in its last event (the final delta's token counts).
    """
    body = {k: v for k, v in inp.body.items() if v is not None}
    body.pop("max_completion_tokens", None)
    body.update(model=model_id, max_tokens=inp.max_tokens, stream=stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
    else:
        body.pop("stream_options", None)
    if inp.request_id:
        body["request_id"] = inp.request_id
    return body


def finish_reason(value: str | None) -> FinishReason:
    return "length" if value in _LENGTH else "stop"


def sse_events(chunks: Iterable[str]) -> list[dict[str, Any] | str]:
    """Parse server-sent-event strings into their JSON payloads (``DONE`` kept as is)."""
    events: list[dict[str, Any] | str] = []
    for chunk in chunks:
        for block in chunk.split("\n\n"):
            for line in block.splitlines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                events.append(DONE if data == DONE else json.loads(data))
    return events


def raise_for_error(payload: Any) -> None:
    """Raise :class:`VllmRefused` (4xx) or :class:`VllmError` for an ``ErrorResponse``
    (object or JSON); do nothing for anything else."""
    doc = _as_dict(payload)
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return
    code = err.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    message = str(err.get("message") or "vLLM error")
    kind = str(err.get("type") or "")
    if status < 500:
        raise VllmRefused(status, message, kind)
    raise VllmError(status, message, kind)


def _as_dict(payload: Any) -> Any:
    dump = getattr(payload, "model_dump", None)
    return dump() if callable(dump) else payload


def output_from_response(payload: Any) -> ChatOutput:
    """``ChatOutput`` from a ``ChatCompletionResponse`` (object or JSON)."""
    raise_for_error(payload)
    doc = _as_dict(payload)
    choice = doc["choices"][0]
    usage = doc.get("usage") or {}
    return ChatOutput(
        text=(choice.get("message") or {}).get("content") or "",
        finish_reason=finish_reason(choice.get("finish_reason")),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


class StreamAssembler:
    """Turns stream chunk payloads into deltas: one per chunk with new text, then a last
    one with the finish reason and the token counts (vLLM sends usage after the finish)."""

    def __init__(self) -> None:
        self.finish: FinishReason | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def feed(self, event: dict[str, Any]) -> ChatDelta | None:
        raise_for_error(event)
        usage = event.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        text = ""
        for choice in event.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or ""
            if choice.get("finish_reason") is not None:
                self.finish = finish_reason(choice["finish_reason"])
        return ChatDelta(text=text) if text else None

    def last(self) -> ChatDelta:
        if self.finish is None:
            raise VllmError(502, "the vLLM stream ended without a finish reason")
        return ChatDelta(
            text="",
            finish_reason=self.finish,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )


def embeddings_enabled(llm_config: dict[str, Any]) -> bool:
    """Whether vLLM serves the model as an embedding (pooling) model."""
    kwargs = llm_config.get("engine_kwargs") or {}
    return kwargs.get("runner") == "pooling" or kwargs.get("convert") == "embed"


def model_id_of(llm_config: dict[str, Any]) -> str:
    return str((llm_config.get("model_loading_config") or {})["model_id"])


# ---------------------------------------------------------------------------- engine


class VllmChatEngine:
    """:class:`~mmo_serving.backend.ChatEngine` over a Ray Serve LLM deployment handle.

    ``model_id`` is the ``LLMConfig``'s ``model_loading_config.model_id`` (vLLM's served
    model name); it defaults to the served model's name. ``embeddings`` says whether the
    deployment runs a pooling model (:func:`embeddings_enabled`).
    """

    def __init__(
        self,
        handle: Any,
        args: AppArgs,
        *,
        model_id: str | None = None,
        embeddings: bool = False,
    ) -> None:
        self.args = args
        self.model_id = model_id or args.name
        self.embeddings = embeddings
        self._handle = handle
        self._stream = handle.options(stream=True)

    async def _calls(self, method: str, request: Any) -> AsyncIterator[Any]:
        async for item in getattr(self._stream, method).remote(request, None):
            yield item

    async def chat(self, inp: ChatInput) -> ChatOutput:
        request = _chat_request(chat_request_body(inp, self.model_id, stream=False))
        async for item in self._calls("chat", request):
            if isinstance(item, list):  # a stream where none was asked for
                raise VllmError(502, "vLLM streamed an answer to a non-streaming request")
            return output_from_response(item)
        raise VllmError(502, "vLLM returned no answer")

    async def chat_stream(self, inp: ChatInput) -> AsyncIterator[ChatDelta]:
        request = _chat_request(chat_request_body(inp, self.model_id, stream=True))
        assembler = StreamAssembler()
        async for item in self._calls("chat", request):
            if not isinstance(item, list | str):  # an ErrorResponse before the stream
                raise_for_error(item)
                raise VllmError(502, f"unexpected item in the vLLM stream: {type(item)}")
            for event in sse_events([item] if isinstance(item, str) else item):
                if event == DONE:
                    yield assembler.last()
                    return
                assert isinstance(event, dict)
                delta = assembler.feed(event)
                if delta is not None:
                    yield delta
        yield assembler.last()

    async def embed(self, items: list[EmbedInput]) -> list[list[float]]:
        if not self.embeddings:
            raise EngineUnsupported(
                f"model {self.args.name!r} has no embedding head: /v1/embeddings needs a "
                "vLLM pooling model (engine argument runner=pooling)"
            )
        texts = []
        for i, item in enumerate(items):
            if item.text is None:
                raise EngineUnsupported(f"input[{i}]: this engine embeds text only")
            texts.append(item.text)
        request = _embedding_request({"model": self.model_id, "input": texts})
        async for item in self._calls("embeddings", request):
            raise_for_error(item)
            data = _as_dict(item)["data"]
            return [list(map(float, d["embedding"])) for d in sorted(data, key=_index)]
        raise VllmError(502, "vLLM returned no embeddings")

    async def check_health(self) -> None:
        await self._handle.check_health.remote()

    async def expert_load(self) -> ExpertLoad | None:
        return None

    async def close(self) -> None:
        return None


def _index(d: dict[str, Any]) -> int:
    return int(d["index"])


def _chat_request(body: dict[str, Any]) -> Any:
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    return ChatCompletionRequest.model_validate(body)


def _embedding_request(body: dict[str, Any]) -> Any:
    from pydantic import TypeAdapter
    from ray.serve.llm.openai_api_models import EmbeddingRequest

    # a union of vLLM's completion-style and chat-style embedding requests
    return TypeAdapter(EmbeddingRequest).validate_python(body)


# ---------------------------------------------------------------------------- deployment


def build_vllm_deployment(
    llm_config: dict[str, Any],
    *,
    name_prefix: str | None = None,
    override_serve_options: dict[str, Any] | None = None,
) -> Application:
    """Ray Serve LLM's ``LLMServer`` deployment for one model, bound: pass it to the
    ingress's ``bind`` and the ingress receives a ``DeploymentHandle``.

    Deployment options (placement group of the engine's workers, autoscaling, health
    checks) are Ray Serve LLM's own, computed from the config; ``override_serve_options``
    replaces some of them.
    """
    from ray.serve.llm import LLMConfig, build_llm_deployment

    return build_llm_deployment(
        LLMConfig.model_validate(llm_config),
        name_prefix=name_prefix,
        override_serve_options=override_serve_options,
    )
