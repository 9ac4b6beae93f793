"""``POST /v1/embeddings``: the request as :class:`EmbedInput` items, and the list body."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

from mmo_serving.backend import EmbedInput
from mmo_serving.config import AppArgs
from mmo_serving.openai import schema as oa
from mmo_serving.openai.images import inline_image


@dataclass(frozen=True)
class EmbedItem:
    inp: EmbedInput
    cache_key_parts: dict[str, Any]


def _part(item: oa.EmbeddingItem, param: str) -> tuple[str | None, str | None]:
    if isinstance(item, str):
        return item, None
    if item.type == "text":
        if item.text is None:
            raise oa.ApiError(
                400,
                f"{param}.text: required when type is 'text'",
                code="invalid_schema",
                param=f"{param}.text",
            )
        return item.text, None
    if item.image_url is None:
        raise oa.ApiError(
            400,
            f"{param}.image_url: required when type is 'image_url'",
            code="invalid_schema",
            param=f"{param}.image_url",
        )
    return None, item.image_url.url


def check_items(req: oa.EmbeddingRequest) -> None:
    """Schema checks the pydantic model cannot express (before the gateway sees it)."""
    for i, item in enumerate(req.items()):
        _part(item, f"input[{i}]" if isinstance(req.input, list) else "input")


def embed_items(req: oa.EmbeddingRequest, args: AppArgs) -> list[EmbedItem]:
    out = []
    for i, item in enumerate(req.items()):
        param = f"input[{i}]" if isinstance(req.input, list) else "input"
        text, url = _part(item, param)
        if url is not None:
            image = inline_image(url, f"{param}.image_url.url", args)
            out.append(EmbedItem(EmbedInput(image=image), {"image": [image.mime, image.sha256]}))
        else:
            out.append(EmbedItem(EmbedInput(text=text or ""), {"text": text}))
    return out


def _b64_floats(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def embeddings_body(req: oa.EmbeddingRequest, vectors: list[list[float]]) -> dict[str, Any]:
    data = []
    for i, vec in enumerate(vectors):
        emb: Any = [float(x) for x in vec]
        if req.encoding_format == "base64":
            emb = _b64_floats(emb)
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
