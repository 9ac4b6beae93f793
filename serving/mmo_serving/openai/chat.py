"""``POST /v1/chat/completions``: the request as a :class:`ChatInput`, and the answer."""

from __future__ import annotations

import time
import uuid
from typing import Any

from mmo_serving.backend import ChatInput, ChatOutput, FinishReason
from mmo_serving.config import AppArgs
from mmo_serving.openai import schema as oa
from mmo_serving.openai.images import inline_image

# The built-in model reads one picture; the check runs for every engine so that a
# request means the same thing whichever engine serves it (the message says "one").
MAX_IMAGES = 1


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
    if len(urls) > MAX_IMAGES:
        param = urls[MAX_IMAGES][1]
        raise oa.ApiError(
            400,
            f"{param}: this model takes at most one image per request, got {len(urls)}",
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


def cache_key_parts(inp: ChatInput) -> dict[str, Any]:
    """What decides the answer: the prompt, the pictures (by hash), the token budget."""
    return {
        "prompt": inp.prompt,
        "image": [inp.images[0].mime, inp.images[0].sha256] if inp.images else None,
        "max_new_tokens": inp.max_tokens,
    }


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
