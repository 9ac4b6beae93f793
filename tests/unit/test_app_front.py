"""The front's request work (``mmo_serving.front.Front``) with a fake ChatEngine, no Ray:
image limits per engine, what the cache key holds, and one truthful audit line per
request (engine failures after the verdict, broken streams, unknown routes)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from PIL import Image

from mmo_serving.backend import ChatDelta, ChatInput, ChatOutput, EmbedInput
from mmo_serving.config import AppArgs
from mmo_serving.expert_load import no_expert_load
from mmo_serving.front import CHAT_ROUTE, EMBED_ROUTE, Front
from mmo_serving.gateway import AuditLog, Gateway
from mmo_serving.gateway.audit import AuditKey
from mmo_serving.openai.errors import install_error_handlers
from mmo_serving.vllm_args import IMAGES_PER_PROMPT

KEY = AuditKey(b"k", "deployment")
BUILTIN = AppArgs(name="m", model_source="builtin://shapes-moe")
VLLM = AppArgs(name="m", model_source="file:///ckpt", engine="vllm")
VLLM_TEXT = VLLM.model_copy(update={"modalities": ["text"]})


def png(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


PICTURES = [png((40 * i, 0, 255 - 40 * i)) for i in range(6)]


class FakeEngine:
    """Numbers its answers, so a cached answer is told from a new one."""

    def __init__(self) -> None:
        self.inputs: list[ChatInput] = []
        self.fail = False
        self.break_stream = False

    async def chat(self, inp: ChatInput) -> ChatOutput:
        self.inputs.append(inp)
        if self.fail:
            raise RuntimeError("the engine failed")
        return ChatOutput(f"answer {len(self.inputs)}", "stop", 3, 2)

    async def chat_stream(self, inp: ChatInput) -> AsyncIterator[ChatDelta]:
        self.inputs.append(inp)
        yield ChatDelta("first")
        if self.break_stream:
            raise RuntimeError("the engine died mid-answer")
        yield ChatDelta(" words", finish_reason="stop", prompt_tokens=3, completion_tokens=2)

    async def embed(self, items: list[EmbedInput]) -> list[list[float]]:
        return [[1.0] for _ in items]

    async def check_health(self) -> None:
        pass

    async def expert_load(self) -> None:
        return None

    async def close(self) -> None:
        pass


class Metrics:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class Served:
    def __init__(self, args: AppArgs) -> None:
        self.audit = io.StringIO()
        self.engine = FakeEngine()
        gateway = Gateway(args.isolation, audit=AuditLog(stream=self.audit), key=KEY)
        front = Front(args, gateway, self.engine, Metrics())  # type: ignore[arg-type]
        api = FastAPI()

        def unrouted(request: Request, err: Any) -> None:  # as app.py's hook does
            front.ledger.unrouted(request, err.status, err.code)

        install_error_handlers(api, on_error=unrouted)

        @api.post(CHAT_ROUTE)
        async def chat(request: Request) -> Any:
            return await front.answer(CHAT_ROUTE, request, front.chat)

        @api.post(EMBED_ROUTE)
        async def embeddings(request: Request) -> Any:
            return await front.answer(EMBED_ROUTE, request, front.embeddings)

        self.http = TestClient(api, raise_server_exceptions=False)

    def chat(self, messages: list[dict[str, Any]], **extra: Any) -> Any:
        body = {"model": "m", "messages": messages, **extra}
        return self.http.post(CHAT_ROUTE, json=body, headers={"X-Request-Id": "r"})

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.audit.getvalue().splitlines()]


def ask(text: str, *images: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return [{"role": "user", "content": parts}]


def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code
    return err


# ------------------------------------------------------------------------------- images


def test_the_builtin_engine_takes_one_image_per_request() -> None:
    served = Served(BUILTIN)
    assert served.chat(ask("what shape?", PICTURES[0])).status_code == 200
    err = _error(served.chat(ask("what shape?", *PICTURES[:2])), 400, "too_many_images")
    assert err["param"] == "messages[0].content[2].image_url.url"
    assert err["message"] == (
        "messages[0].content[2].image_url.url: model 'm' takes at most 1 image(s) per "
        "request (the built-in model reads one image), got 2"
    )


def test_vllm_takes_as_many_images_as_its_multimodal_limit() -> None:
    served = Served(VLLM)
    resp = served.chat(ask("compare", *PICTURES[:IMAGES_PER_PROMPT]), temperature=0)
    assert resp.status_code == 200, resp.text
    assert len(served.engine.inputs[-1].images) == IMAGES_PER_PROMPT
    err = _error(served.chat(ask("compare", *PICTURES[:5])), 400, "too_many_images")
    assert err["param"] == f"messages[0].content[{IMAGES_PER_PROMPT + 1}].image_url.url"
    assert (
        f"takes at most {IMAGES_PER_PROMPT} image(s) per request "
        "(vLLM's limit_mm_per_prompt for image), got 5"
    ) in err["message"]


@pytest.mark.parametrize("count", [1, 2])
def test_a_text_only_vllm_model_refuses_an_image_naming_the_field(count: int) -> None:
    served = Served(VLLM_TEXT)
    err = _error(served.chat(ask("hi", *PICTURES[:count])), 400, "unsupported_modality")
    assert err["param"] == "messages[0].content[1].image_url.url"
    assert err["message"] == (
        "messages[0].content[1].image_url.url: model 'm' does not accept images (modalities: text)"
    )
    assert served.engine.inputs == []
    (line,) = served.lines()  # refused after the gateway's verdict: that line, saying so
    assert (line["decision"], line["status"]) == ("local", 400)
    assert (line["error"], line["answeredBy"]) == ("unsupported_modality", "none")


# -------------------------------------------------------------------------------- cache


def _answer(resp: Any) -> tuple[str, str]:
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"], resp.headers["x-mmo-cache"]


def test_vllm_cache_key_holds_every_image_and_the_whole_conversation() -> None:
    served = Served(VLLM)
    first = served.chat(ask("compare", PICTURES[0], PICTURES[1]), temperature=0)
    assert _answer(first) == ("answer 1", "miss")
    again = served.chat(ask("compare", PICTURES[0], PICTURES[1]), temperature=0)
    assert _answer(again) == ("answer 1", "hit")
    other_second = served.chat(ask("compare", PICTURES[0], PICTURES[2]), temperature=0)
    assert _answer(other_second) == ("answer 2", "miss")
    swapped = served.chat(ask("compare", PICTURES[1], PICTURES[0]), temperature=0)
    assert _answer(swapped) == ("answer 3", "miss")
    system = [{"role": "system", "content": "answer in French"}, *ask("compare", PICTURES[0])]
    assert _answer(served.chat(ask("compare", PICTURES[0]), temperature=0))[1] == "miss"
    assert _answer(served.chat(system, temperature=0)) == ("answer 5", "miss")
    longer = served.chat(ask("compare", PICTURES[0]), temperature=0, max_tokens=3)
    assert _answer(longer) == ("answer 6", "miss")


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.7}])
def test_vllm_sampled_answers_are_not_cached(sampling: dict[str, Any]) -> None:
    served = Served(VLLM)
    for n in (1, 2):
        assert _answer(served.chat(ask("a poem"), **sampling)) == (f"answer {n}", "bypass")
    assert [line["status"] for line in served.lines()] == [200, 200]


def test_builtin_answers_are_greedy_and_cached_whatever_the_temperature() -> None:
    served = Served(BUILTIN)
    assert _answer(served.chat(ask("what shape?", PICTURES[0]))) == ("answer 1", "miss")
    hit = served.chat(ask("what shape?", PICTURES[0]), temperature=0.9)
    assert _answer(hit) == ("answer 1", "hit")
    assert _answer(served.chat(ask("what shape?", PICTURES[1])))[1] == "miss"


# -------------------------------------------------------------------------------- audit


def test_an_engine_failure_after_the_verdict_is_audited_as_a_failure() -> None:
    served = Served(BUILTIN)
    served.engine.fail = True
    _error(served.chat(ask("what shape?", PICTURES[0])), 500, "internal_error")
    (line,) = served.lines()
    assert (line["decision"], line["status"], line["error"]) == ("local", 500, "internal_error")
    assert line["answeredBy"] == "none"


def test_a_stream_that_breaks_off_is_audited_when_it_ends() -> None:
    served = Served(VLLM)
    served.engine.break_stream = True
    broken = served.chat(ask("hi"), stream=True)  # the 200 and the first events went out
    assert broken.status_code == 200 and "first" in broken.text and "[DONE]" not in broken.text
    (line,) = served.lines()
    assert (line["status"], line["error"], line["answeredBy"]) == (200, "stream_failed", "none")
    served.engine.break_stream = False
    resp = served.chat(ask("hi"), stream=True)
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    assert served.lines()[-1]["error"] is None and len(served.lines()) == 2


def _unrouted(served: Served) -> Iterator[tuple[Any, int, str, str]]:
    http = served.http
    yield http.get("/v1/alice@example.com"), 404, "unknown_route", "unknown"
    yield http.get(CHAT_ROUTE), 405, "method_not_allowed", "chat/completions"
    yield http.post("/v2/embeddings", json={}), 404, "unknown_route", "unknown"


def test_unknown_routes_and_wrong_methods_write_one_line_each() -> None:
    served = Served(BUILTIN)
    for resp, status, code, route in _unrouted(served):
        _error(resp, status, code)
        line = served.lines()[-1]
        assert (line["decision"], line["status"], line["error"]) == ("rejected", status, code)
        assert line["route"] == route
    assert len(served.lines()) == 3
    assert "alice" not in served.audit.getvalue()  # a path is client input: never written


def test_the_vllm_front_says_why_it_reports_no_expert_load() -> None:
    err = no_expert_load("vllm")
    assert (err.status, err.code) == (404, "expert_load_unavailable")
    assert err.message.startswith(
        "engine vllm does not report expert load: vLLM re-places the experts itself (EPLB"
    )
    assert "the operator's live rebalancing skips this model" in err.message
    assert no_expert_load("mmo").message == "engine mmo does not report expert load"


def test_a_stream_dropped_before_it_started_still_writes_its_line() -> None:
    import asyncio
    import gc

    from starlette.responses import StreamingResponse

    from mmo_serving.gateway import RequestInfo
    from mmo_serving.request_ledger import Outcome, RequestLedger

    audit = io.StringIO()
    gateway = Gateway(BUILTIN.isolation, audit=AuditLog(stream=audit), key=KEY)
    ledger = RequestLedger(gateway, Metrics(), "private", (CHAT_ROUTE,))  # type: ignore[arg-type]
    request = Request({"type": "http", "method": "POST", "path": CHAT_ROUTE, "headers": []})
    info = RequestInfo("r-5", CHAT_ROUTE, {}, {"model": "m", "messages": ask("hi")}, 0)
    out = Outcome(CHAT_ROUTE, "r-5", verdict=asyncio.run(gateway.decide(info)))  # type: ignore[arg-type]

    async def chunks() -> AsyncIterator[str]:
        yield "data: [DONE]\n\n"

    resp = ledger.close(out, request, StreamingResponse(chunks()))
    assert audit.getvalue() == ""  # a stream's line waits for the stream
    del resp
    gc.collect()
    (line,) = [json.loads(x) for x in audit.getvalue().splitlines()]
    assert (line["status"], line["error"], line["answeredBy"]) == (
        200,
        "client_disconnected",
        "none",
    )
