"""The body an offload sends: rebuilt from the OpenAI schema, never the client's JSON.

A client's JSON may carry fields that the schema (:mod:`mmo_serving.openai.schema`)
accepts and ignores: ``metadata``, ``user``, a ``name`` on a message, vendor
extensions. None of them is forwarded. The outbound body is built field by field from
the validated request, so that what leaves is only what the gateway knows how to read,
classify and redact:

- ``chat/completions``: ``model``; ``messages`` as ``role`` and ``content`` (a string,
  or a list of text parts and image parts, an image part holding ``url`` and
  ``detail``); ``max_tokens`` (the request's ``max_completion_tokens`` or
  ``max_tokens``) and ``temperature`` when given; ``stream: false``.
- ``embeddings``: ``model``, ``input`` (strings, text parts, image parts) and
  ``encoding_format``.

A body that does not validate, and any other route, is not forwardable (``None``):
the gateway then serves the request locally.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from mmo_serving.openai import schema as oa

CHAT_ROUTE = "chat/completions"
EMBED_ROUTE = "embeddings"


def _image(image: oa.ImageUrl) -> dict[str, Any]:
    out: dict[str, Any] = {"url": image.url}
    if image.detail is not None:
        out["detail"] = image.detail
    return {"type": "image_url", "image_url": out}


def _content(content: str | list[oa.TextPart | oa.ImagePart]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    return [
        {"type": "text", "text": p.text} if isinstance(p, oa.TextPart) else _image(p.image_url)
        for p in content
    ]


def _chat(body: dict[str, Any]) -> dict[str, Any]:
    req = oa.ChatCompletionRequest.model_validate(body)
    out: dict[str, Any] = {
        "model": req.model,
        "messages": [{"role": m.role, "content": _content(m.content)} for m in req.messages],
        "stream": False,
    }
    if req.requested_tokens() is not None:
        out["max_tokens"] = req.requested_tokens()
    if req.temperature is not None:
        out["temperature"] = req.temperature
    return out


def _embedding_item(item: oa.EmbeddingItem) -> str | dict[str, Any] | None:
    if isinstance(item, str):
        return item
    if item.type == "text":
        return {"type": "text", "text": item.text} if item.text is not None else None
    return _image(item.image_url) if item.image_url is not None else None


def _embeddings(body: dict[str, Any]) -> dict[str, Any] | None:
    req = oa.EmbeddingRequest.model_validate(body)
    items = req.input if isinstance(req.input, list) else [req.input]
    rebuilt = [_embedding_item(item) for item in items]
    if not rebuilt or any(item is None for item in rebuilt):
        return None
    return {
        "model": req.model,
        "input": rebuilt if isinstance(req.input, list) else rebuilt[0],
        "encoding_format": req.encoding_format,
    }


def rebuild(body: Any, route: str) -> dict[str, Any] | None:
    """The forwardable copy of ``body`` for ``route`` (``chat/completions`` or
    ``embeddings``, as under ``/v1``), or ``None`` when it cannot be forwarded."""
    if not isinstance(body, dict):
        return None
    try:
        if route == CHAT_ROUTE:
            return _chat(body)
        if route == EMBED_ROUTE:
            return _embeddings(body)
    except ValidationError:
        return None
    return None


def _chat_reply_problem(reply: dict[str, Any]) -> str | None:
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "a reply without choices"
    message = choices[0].get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        return "a reply without choices[0].message.content"
    return None


def _embeddings_reply_problem(reply: dict[str, Any]) -> str | None:
    data = reply.get("data")
    if not isinstance(data, list) or not data:
        return "a reply without data"
    for item in data:
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(vector, list | str):  # str: encoding_format base64
            return "a reply without data[].embedding"
    return None


def reply_problem(route: str, reply: dict[str, Any]) -> str | None:
    """What makes the endpoint's JSON ``reply`` unusable as the answer for ``route``, in
    fixed words (never its content); ``None`` when it has the OpenAI shape."""
    if route == CHAT_ROUTE:
        return _chat_reply_problem(reply)
    if route == EMBED_ROUTE:
        return _embeddings_reply_problem(reply)
    return f"a reply for a route the gateway does not forward ({route})"
