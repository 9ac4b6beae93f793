"""What every API request leaves behind: its in-flight count, its metrics and exactly one
audit line, whatever happened.

The line of a request the gateway let through (``Local``, ``Offloaded``) is written with
how it ended: the status answered, and the error's code when the engine failed after
the verdict (a 500) or a streamed answer broke off after its first event. A request
that ended before the verdict (body too large, bad JSON or schema, unknown model, a
bad header...) gets a ``rejected`` line, and so does a request for an unknown route or
with a wrong method (404, 405). The gateway's refusals write their own line.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from mmo_serving.backend import EngineUnsupported
from mmo_serving.gateway import Gateway, Local, Offloaded
from mmo_serving.metrics import ServingMetrics
from mmo_serving.openai import schema as oa
from mmo_serving.openai.errors import error_response

log = logging.getLogger("mmo_serving.request_ledger")

INTERNAL_ERROR = "internal_error"
# a streamed answer that broke off after its first event (the HTTP status was 200)
STREAM_FAILED = "stream_failed"
CLIENT_GONE = "client_disconnected"
# the route written for a path the app does not serve (the path is client input)
UNKNOWN_ROUTE = "unknown"

Chunk = str | bytes | memoryview
# (verdict, route, status, error) -> the audit line written
Served = Callable[[Local | Offloaded, str, int, str], None]


@dataclass
class Outcome:
    """What one request did: its metrics' labels, and the gateway's verdict once made."""

    route: str
    request_id: str
    code: int = 200
    error_code: str = ""
    modality: str = "text"
    cache: str = "off"
    start: float = field(default_factory=time.perf_counter)
    verdict: Local | Offloaded | None = None
    decided: bool = False  # the gateway decided (a refusal's line is already written)


class RequestLedger:
    def __init__(
        self, gateway: Gateway, metrics: ServingMetrics, mode: str, routes: tuple[str, ...]
    ):
        self.gateway = gateway
        self.metrics = metrics
        self.mode = mode
        self.routes = routes
        self.inflight = dict.fromkeys(routes, 0)

    def open(self, route: str, request: Request) -> Outcome:
        """Count the request in flight; its id is the client's ``X-Request-Id`` or new."""
        self.inflight[route] += 1
        self.metrics.queue_depth(route, self.inflight[route])
        return Outcome(route, request.headers.get("x-request-id") or uuid.uuid4().hex)

    def failed(self, out: Outcome, exc: BaseException) -> Response:
        """The OpenAI error answer of an exception; the outcome notes status and code."""
        if isinstance(exc, EngineUnsupported):
            err = oa.ApiError(400, str(exc), code="unsupported_by_engine")
        elif isinstance(exc, oa.ApiError):
            err = exc
        else:
            log.error("%s failed", out.route, exc_info=exc)
            err = oa.ApiError(500, "internal error", code=INTERNAL_ERROR, type="server_error")
        out.code, out.error_code = err.status, err.code
        return error_response(err)

    def close(self, out: Outcome, request: Request, resp: Response | None) -> Response | None:
        """Count the request out, record its metrics, and write its audit line; a
        stream's line waits for the stream's end (the answer wrapped here)."""
        self.inflight[out.route] -= 1
        self.metrics.queue_depth(out.route, self.inflight[out.route])
        self.metrics.request(
            route=out.route,
            code=out.code,
            mode=self.mode,
            modality=out.modality,
            cache=out.cache,
            seconds=time.perf_counter() - out.start,
        )
        if isinstance(resp, StreamingResponse) and out.verdict is not None and out.code == 200:
            once = _Once(self._served, out.verdict, out.route)
            resp.body_iterator = stream = _audited_stream(resp.body_iterator, once)
            # a stream never started (the client left before it) still gets its line
            weakref.finalize(stream, once, CLIENT_GONE)
        elif out.verdict is not None:
            self._served(out.verdict, out.route, out.code, out.error_code)
        elif not out.decided:
            self.rejected(request, out.route, out.code, out.error_code, out.request_id)
        return resp

    def cancelled(self, out: Outcome) -> None:
        """The client went away before the answer (Serve cancels the handler)."""
        out.code, out.error_code = 499, CLIENT_GONE

    def unrouted(self, request: Request, status: int, code: str) -> None:
        """The line of a request for an unknown route or with a wrong method."""
        path = request.url.path
        root = str(request.scope.get("root_path") or "")  # the app's route prefix
        if root and path.startswith(root):
            path = path[len(root) :]
        self.rejected(request, path, status, code)

    def rejected(
        self, request: Request, route: str, status: int, code: str, request_id: str | None = None
    ) -> None:
        """The line of a request answered without a verdict (never raises)."""
        rid = request_id or request.headers.get("x-request-id")
        name = route if route in self.routes else UNKNOWN_ROUTE
        try:
            self.gateway.record_rejected(rid, request.headers.items(), name, status, code)
        except Exception:
            log.exception("%s: writing the audit line failed", name)

    def _served(self, verdict: Local | Offloaded, route: str, status: int, code: str) -> None:
        try:
            self.gateway.served(verdict, status, code)
        except Exception:
            log.exception("%s: writing the audit line failed", route)


class _Once:
    """Writes a stream's audit line once: at its end, or when it is dropped unstarted."""

    def __init__(self, served: Served, verdict: Local | Offloaded, route: str) -> None:
        self.served = served
        self.verdict = verdict
        self.route = route
        self.done = False

    def __call__(self, error: str) -> None:
        if not self.done:
            self.done = True
            self.served(self.verdict, self.route, 200, error)


async def _audited_stream(chunks: AsyncIterable[Chunk], once: _Once) -> AsyncIterator[Chunk]:
    error = CLIENT_GONE  # what it was if the stream is closed before its end
    try:
        async for chunk in chunks:
            yield chunk
        error = ""
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("a streamed answer broke off")
        error = STREAM_FAILED
        raise
    finally:
        once(error)
