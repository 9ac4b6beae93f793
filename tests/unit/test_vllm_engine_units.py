"""VllmChatEngine without Ray or vLLM: request translation, stream parsing, errors.

The handle is a fake with Serve's calling shape (``handle.options(stream=True).chat
.remote(request, raw_request_info)`` is an async iterator); the request stays a dict
(in a replica it becomes vLLM's ``ChatCompletionRequest``). The real engine behind a
real handle, behind mmo up, is tested in tests/vllm/test_vllm_up.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mmo_serving import vllm_engine as ve
from mmo_serving.backend import ChatDelta, ChatInput, EmbedInput, EngineUnsupported
from mmo_serving.config import AppArgs

IMAGE = "data:image/png;base64,iVBORw0KGgo="
ARGS = AppArgs(name="m", model_source="/models/m", engine="vllm")


def _input(**body: Any) -> ChatInput:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return ChatInput(body={**base, **body}, prompt="hi", max_tokens=5, request_id="r1")


def _sse(doc: dict[str, Any] | str) -> str:
    return f"data: {doc if isinstance(doc, str) else json.dumps(doc)}\n\n"


def _chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}


class _Method:
    def __init__(self, handle: FakeHandle, name: str) -> None:
        self.handle = handle
        self.name = name

    def remote(self, request: Any = None, raw: Any = None) -> Any:
        self.handle.calls.append((self.name, request, raw, self.handle.stream))
        if not self.handle.stream:
            return _done()
        return _iterate(self.handle.items)


async def _done() -> None:
    return None


async def _iterate(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


class FakeHandle:
    def __init__(self, items: list[Any], calls: list[Any] | None = None) -> None:
        self.items = items
        self.stream = False
        self.calls: list[Any] = [] if calls is None else calls

    def options(self, *, stream: bool) -> FakeHandle:
        other = FakeHandle(self.items, self.calls)
        other.stream = stream
        return other

    def __getattr__(self, name: str) -> _Method:
        return _Method(self, name)


@pytest.fixture(autouse=True)
def _requests_stay_dicts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ve, "_chat_request", lambda body: body)
    monkeypatch.setattr(ve, "_embedding_request", lambda body: body)


def _stream(engine: ve.VllmChatEngine, inp: ChatInput) -> list[ChatDelta]:
    async def collect() -> list[ChatDelta]:
        return [d async for d in engine.chat_stream(inp)]

    return asyncio.run(collect())


# ---------------------------------------------------------------------------- requests


def test_request_keeps_the_conversation_with_images_and_sets_model_budget_stream() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": IMAGE}},
            ],
        },
    ]
    inp = ChatInput(
        body={
            "model": "public-name",
            "messages": messages,
            "max_completion_tokens": 99,
            "temperature": 0,
            "stream": True,
            "max_tokens": None,
        },
        prompt="what is this?",
        max_tokens=5,
        request_id="req-1",
    )
    body = ve.chat_request_body(inp, "served-id", stream=False)
    assert body == {
        "model": "served-id",
        "messages": messages,
        "temperature": 0,
        "max_tokens": 5,  # the budget the front granted, not the client's 99
        "stream": False,
        "request_id": "req-1",
    }
    streamed = ve.chat_request_body(inp, "served-id", stream=True)
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}


# ---------------------------------------------------------------------------- parsing


def test_sse_events_splits_grouped_events_and_keeps_done() -> None:
    grouped = _sse(_chunk("a")) + _sse(_chunk("b"))
    assert ve.sse_events([grouped, _sse("[DONE]")]) == [_chunk("a"), _chunk("b"), ve.DONE]


def test_finish_reasons_map_to_stop_or_length() -> None:
    assert ve.finish_reason("length") == "length"
    assert [ve.finish_reason(r) for r in ("stop", "abort", None)] == ["stop"] * 3


def test_whole_answer_from_response() -> None:
    doc = {
        "choices": [{"message": {"content": "hello"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 5},
    }
    out = ve.output_from_response(doc)
    assert (out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens) == (
        "hello",
        "length",
        4,
        5,
    )


def test_vllm_4xx_is_refused_with_its_message_5xx_is_an_error() -> None:
    refusal = {"error": {"message": "prompt is longer than max_model_len", "code": 400}}
    with pytest.raises(EngineUnsupported, match="longer than max_model_len") as exc:
        ve.raise_for_error(refusal)
    assert isinstance(exc.value, ve.VllmRefused) and exc.value.status == 400
    with pytest.raises(ve.VllmError, match="engine dead") as err:
        ve.raise_for_error({"error": {"message": "engine dead", "code": 500}})
    assert err.value.status == 500
    ve.raise_for_error({"choices": []})  # not an error: nothing raised


def test_embeddings_enabled_only_for_pooling_models() -> None:
    assert ve.embeddings_enabled({"engine_kwargs": {"runner": "pooling"}})
    assert ve.embeddings_enabled({"engine_kwargs": {"convert": "embed"}})
    assert not ve.embeddings_enabled({"engine_kwargs": {"dtype": "bfloat16"}})
    assert not ve.embeddings_enabled({})


# ---------------------------------------------------------------------------- engine


def test_chat_sends_one_request_and_reads_the_response() -> None:
    handle = FakeHandle(
        [
            {
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1},
            }
        ]
    )
    engine = ve.VllmChatEngine(handle, ARGS, model_id="served")
    out = asyncio.run(engine.chat(_input()))
    assert out.text == "ok" and out.finish_reason == "stop"
    [(method, request, raw, stream)] = handle.calls
    assert (method, raw, stream) == ("chat", None, True)
    assert request["model"] == "served" and request["stream"] is False


def test_stream_yields_each_token_then_finish_with_usage() -> None:
    events = [_chunk(""), _chunk("Hel"), _chunk("lo"), _chunk(None, "length"), USAGE]
    # Ray Serve LLM sends lists of SSE strings (one per token without stream batching)
    handle = FakeHandle([[_sse(e)] for e in events] + [[_sse("[DONE]")]])
    deltas = _stream(ve.VllmChatEngine(handle, ARGS), _input())
    assert [d.text for d in deltas] == ["Hel", "lo", ""]
    assert deltas[-1] == ChatDelta("", "length", 7, 3)
    assert all(d.finish_reason is None for d in deltas[:-1])


def test_stream_error_before_the_first_token_is_raised() -> None:
    handle = FakeHandle([{"error": {"message": "bad image", "code": 400}}])
    with pytest.raises(ve.VllmRefused, match="bad image"):
        _stream(ve.VllmChatEngine(handle, ARGS), _input())


def test_stream_error_event_is_raised() -> None:
    error = {"error": {"message": "engine died", "code": 500}}
    handle = FakeHandle([[_sse(_chunk("a"))], [_sse(error)]])
    with pytest.raises(ve.VllmError, match="engine died"):
        _stream(ve.VllmChatEngine(handle, ARGS), _input())


def test_stream_without_finish_is_an_error() -> None:
    handle = FakeHandle([[_sse(_chunk("a"))], [_sse("[DONE]")]])
    with pytest.raises(ve.VllmError, match="without a finish reason"):
        _stream(ve.VllmChatEngine(handle, ARGS), _input())


def test_embeddings_refused_for_a_generative_model() -> None:
    engine = ve.VllmChatEngine(FakeHandle([]), ARGS)
    with pytest.raises(EngineUnsupported, match="model 'm' has no embedding head"):
        asyncio.run(engine.embed([EmbedInput(text="x")]))


def test_embeddings_of_a_pooling_model_in_input_order() -> None:
    response = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]}
    handle = FakeHandle([response])
    engine = ve.VllmChatEngine(handle, ARGS, model_id="served", embeddings=True)
    vectors = asyncio.run(engine.embed([EmbedInput(text="a"), EmbedInput(text="b")]))
    assert vectors == [[1.0], [2.0]]
    assert handle.calls[0][1] == {"model": "served", "input": ["a", "b"]}


def test_embeddings_of_images_are_refused() -> None:
    from mmo_serving.images import parse_data_url

    image = parse_data_url(IMAGE, max_bytes=1024, param="input")
    engine = ve.VllmChatEngine(FakeHandle([]), ARGS, embeddings=True)
    with pytest.raises(EngineUnsupported, match=r"input\[0\]: this engine embeds text only"):
        asyncio.run(engine.embed([EmbedInput(image=image)]))


def test_health_calls_the_deployment_and_expert_load_is_unknown() -> None:
    handle = FakeHandle([])
    engine = ve.VllmChatEngine(handle, ARGS)
    asyncio.run(engine.check_health())
    assert handle.calls == [("check_health", None, None, False)]
    assert asyncio.run(engine.expert_load()) is None
