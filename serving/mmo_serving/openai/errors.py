"""Every error the front answers, in the OpenAI shape, unknown routes and methods too."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from mmo_serving.openai.schema import ApiError

ROUTES_HINT = (
    "POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models, GET /v1/expert-load, "
    "GET /healthz, GET /readyz"
)


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def http_error(request: Request, exc: HTTPException) -> ApiError:
    """Starlette's own errors (no route, wrong method) as an :class:`ApiError`."""
    path = request.url.path
    if exc.status_code == 404:
        return ApiError(404, f"no route {path}; routes: {ROUTES_HINT}", code="unknown_route")
    if exc.status_code == 405:
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        allowed = headers.get("allow", "")
        return ApiError(
            405,
            f"method {request.method} is not allowed on {path}; allowed: {allowed}",
            code="method_not_allowed",
        )
    return ApiError(exc.status_code, str(exc.detail), code="http_error")


def install_error_handlers(
    api: FastAPI, on_error: Callable[[Request, ApiError], None] | None = None
) -> None:
    """Answer Starlette's own errors in the OpenAI shape; ``on_error`` sees each one
    (the audit line of a request for an unknown route or with a wrong method)."""

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        err = http_error(request, exc)
        if on_error is not None:
            on_error(request, err)
        resp = error_response(err)
        if exc.headers:
            resp.headers.update(exc.headers)  # e.g. Allow on a 405
        return resp

    api.add_exception_handler(HTTPException, on_http_error)
