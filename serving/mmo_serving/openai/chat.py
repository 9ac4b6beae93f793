"""``POST /v1/chat/completions``: the request as a :class:`ChatInput`, and the answer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from mmo_serving.backend import ChatInput, ChatOutput, FinishReason
from mmo_serving.config import AppArgs
from mmo_serving.images import RawImage
from mmo_serving.openai import schema as oa
from mmo_serving.openai.images import check_takes_images, inline_image
from mmo_serving.openai.sse import events, words
from mmo_serving.vllm_args import images_per_prompt
from mmo_serving.vllm_engine import chat_request_body

# The built-in model reads one picture per question.
BUILTIN_IMAGES = 1


def max_images(args: AppArgs) -> tuple[int, str]:
    """How many images one request may carry, and where that limit comes from."""
    if args.engine == "vllm":
        return images_per_prompt(args), "vLLM's limit_mm_per_prompt for image"
    return BUILTIN_IMAGES, "the built-in model reads one image"


def image_urls(req: oa.ChatCompletionRequest) -> list[tuple[str, str]]:
    """Every (image url, param) of the conversation, in order."""
    out: list[tuple[str, str]] = []
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, str):
            continue
        for j, part in enumerate(msg.content):
            if isinstance(part, oa.ImagePart):
                out.append((part.image_url.url, f"messages[{i}].content[{j}].image_url.url"))
    return out


def prompt(req: oa.ChatCompletionRequest) -> str:
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


def chat_input(
    req: oa.ChatCompletionRequest, body: dict[str, Any], args: AppArgs, request_id: str
) -> ChatInput:
    """What the engine gets; raises :class:`ApiError` for what no engine may serve."""
    urls = image_urls(req)
    if urls:  # a text-only model: refused naming the first image
        check_takes_images(urls[0][1], args)
    limit, why = max_images(args)
    if len(urls) > limit:
        param = urls[limit][1]
        raise oa.ApiError(
            400,
            f"{param}: model {args.name!r} takes at most {limit} image(s) per request "
            f"({why}), got {len(urls)}",
            code="too_many_images",
            param=param,
        )
    images = [inline_image(url, param, args) for url, param in urls]
    max_tokens = min(req.requested_tokens() or args.max_new_tokens, args.max_new_tokens)
    return ChatInput(
        body=body,
        prompt=prompt(req),
        images=images,
        max_tokens=max_tokens,
        request_id=request_id,
    )


def cache_key_parts(inp: ChatInput, args: AppArgs) -> dict[str, Any] | None:
    """What decides the answer, for the cache key; None when the answer is sampled and so
    must not be reused.

    The built-in engine answers greedily from the last user text, the images and the
    token budget. vLLM answers the request the front forwards to it
    (:func:`~mmo_serving.vllm_engine.chat_request_body`: the whole conversation, the
    token budget and ``temperature``; other sampling fields are not forwarded), each
    image by its digest; it samples unless ``temperature`` is 0 (omitted, the
    checkpoint's own default applies), and sampled answers are not cached.
    """
    if args.engine != "vllm":
        return {
            "prompt": inp.prompt,
            "images": [[image.mime, image.sha256] for image in inp.images],
            "max_new_tokens": inp.max_tokens,
        }
    if inp.body.get("temperature") != 0:
        return None
    body = chat_request_body(inp, args.name, stream=False)
    body.pop("request_id", None)
    body["messages"] = _images_by_digest(body["messages"], iter(inp.images))
    return body


def _images_by_digest(messages: list[Any], images: Iterator[RawImage]) -> list[Any]:
    """The messages with each inline image's URL replaced by its type and digest, in the
    order :func:`image_urls` found them."""
    out = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            content = [
                {**part, "image_url": {**part["image_url"], "url": _digest(next(images))}}
                if part.get("type") == "image_url"
                else part
                for part in content
            ]
        out.append({**msg, "content": content})
    return out


def _digest(image: RawImage) -> str:
    return f"{image.mime};sha256,{image.sha256}"


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_body(model: str, out: ChatOutput) -> dict[str, Any]:
    body = oa.ChatCompletion(
        id=new_completion_id(),
        created=int(time.time()),
        model=model,
        choices=[
            oa.Choice(
                index=0,
                message=oa.AssistantMessage(content=out.text),
                finish_reason=out.finish_reason,
            )
        ],
        usage=oa.Usage(
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            total_tokens=out.prompt_tokens + out.completion_tokens,
        ),
    )
    return body.model_dump()


def offloaded_output(response: dict[str, Any]) -> ChatOutput:
    """The answer in an offloaded (complete) response, to stream it."""
    choice = (response.get("choices") or [{}])[0]
    text = str((choice.get("message") or {}).get("content") or "")
    finish: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
    return ChatOutput(text, finish, 0, 0)


def offloaded_reply(response: dict[str, Any], stream: bool, model: str) -> Response:
    """The cloud's (complete) answer as JSON, or as server-sent events when the client
    asked for a stream."""
    headers = {"x-mmo-cache": "offload"}
    if not stream:
        return JSONResponse(response, headers=headers)
    sse = events(
        str(response.get("id") or new_completion_id()),
        int(response.get("created") or time.time()),
        str(response.get("model") or model),
        words(offloaded_output(response)),
    )
    return StreamingResponse(sse, media_type="text/event-stream", headers=headers)
