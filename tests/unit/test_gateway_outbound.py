"""The outbound body is rebuilt from the OpenAI schema: unknown fields never leave."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mmo_serving.gateway.outbound import rebuild

PNG = "data:image/png;base64,iVBORw0KGgo="
EXTRAS_PII = ["4111 1111 1111 1111", "alice@example.com", "bob@example.com", "carol@example.com"]


def chat_with_extras() -> dict[str, Any]:
    return {
        "model": "shapes",
        "user": "carol@example.com",
        "metadata": {"type": "4111 1111 1111 1111", "alice@example.com": "x"},
        "seed": 7,
        "stream": True,
        "n": 1,
        "max_completion_tokens": 12,
        "max_tokens": 99,
        "temperature": 0.5,
        "messages": [
            {"role": "system", "content": "be brief", "name": "alice@example.com"},
            {
                "role": "user",
                "model": "bob@example.com",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                ],
            },
        ],
    }


def test_chat_keeps_only_the_fields_the_schema_knows() -> None:
    out = rebuild(chat_with_extras(), "chat/completions")
    assert out == {
        "model": "shapes",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                ],
            },
        ],
        "max_tokens": 12,  # max_completion_tokens wins, as in local serving
        "temperature": 0.5,
        "stream": False,
    }
    for value in EXTRAS_PII:
        assert value not in json.dumps(out)


def test_embeddings_keep_model_input_and_format() -> None:
    body = {
        "model": "shapes",
        "input": ["hello", {"type": "image_url", "image_url": {"url": PNG}}],
        "user": "alice@example.com",
        "dimensions": 3,
    }
    assert rebuild(body, "embeddings") == {
        "model": "shapes",
        "input": ["hello", {"type": "image_url", "image_url": {"url": PNG}}],
        "encoding_format": "float",
    }
    one = rebuild({"model": "m", "input": "hi", "encoding_format": "base64"}, "embeddings")
    assert one == {"model": "m", "input": "hi", "encoding_format": "base64"}


AUDIO = {"role": "user", "content": [{"type": "audio"}]}
IMAGE_WITH_NOTE = {
    "role": "user",
    "content": [{"type": "image_url", "image_url": {"url": PNG, "note": "alice@example.com"}}],
}


@pytest.mark.parametrize(
    "body,route",
    [
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "completions"),
        ({"model": "m", "messages": [{"role": "tool", "content": "hi"}]}, "chat/completions"),
        ({"model": "m", "messages": [AUDIO]}, "chat/completions"),
        ({"model": "m", "messages": [IMAGE_WITH_NOTE]}, "chat/completions"),
        ({"model": "m", "input": [{"type": "text"}]}, "embeddings"),
        ({"model": "m", "input": []}, "embeddings"),
        (["not", "an", "object"], "chat/completions"),
    ],
)
def test_what_cannot_be_rebuilt_is_not_forwarded(body: Any, route: str) -> None:
    assert rebuild(body, route) is None
