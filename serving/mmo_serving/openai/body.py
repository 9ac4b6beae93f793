"""The request body, read up to the deployment's limit (``AppArgs.max_request_bytes``).

A ``Content-Length`` over the limit is refused before a byte is read; a body sent
without one (chunked) is refused as soon as what has arrived passes the limit. Either
way the answer is 413 in the OpenAI error shape, naming the limit.
"""

from __future__ import annotations

from starlette.requests import Request

from mmo_serving.openai.schema import ApiError


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"request body is larger than the limit of {limit} bytes (spec.serving.maxRequestBytes)",
        code="request_too_large",
    )


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(
                400,
                f"header Content-Length: not a byte count (length {len(declared)})",
                code="invalid_content_length",
            )
        if int(declared) > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
