"""What the front makes of a gateway verdict, for the gateway's unit tests.

``serve`` does what the Serve app does around ``Gateway.decide``, with a local model
standing for the engine: a ``Local`` verdict is answered by ``local_model`` (an
exception there is the engine failing after the verdict: 500), an ``Offloaded`` one
with the cloud's answer, a ``Refused`` one with its error; the verdict's audit line is
then written with how the request ended, as the front writes it (``Gateway.served``).
``conftest.py`` puts this folder on ``sys.path``: test modules ``import gateway_front``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mmo_serving.gateway import Gateway, Local, Offloaded, RequestInfo, Verdict

LocalModel = Callable[[dict[str, Any], Local], Awaitable[dict[str, Any]]]
ENGINE_FAILED = {"error": {"message": "internal error", "code": "internal_error"}}


@dataclass
class Served:
    """The front's answer to one request: status, body, the verdict's outcome."""

    status: int
    body: dict[str, Any]
    decision: str
    verdict: Verdict


async def serve(
    gw: Gateway,
    body: dict[str, Any],
    headers: dict[str, str] | list[tuple[str, str]],
    *,
    local_model: LocalModel,
    queue_depth: int = 0,
    route: str = "/v1/chat/completions",
) -> Served:
    verdict = await gw.decide(RequestInfo("", route, headers, body, queue_depth))
    if isinstance(verdict, Local):
        try:
            answer = await local_model(body, verdict)
        except Exception:
            gw.served(verdict, 500, "internal_error")
            return Served(500, ENGINE_FAILED, verdict.outcome, verdict)
        gw.served(verdict, 200)
        return Served(200, answer, verdict.outcome, verdict)
    if isinstance(verdict, Offloaded):
        gw.served(verdict, 200)
        return Served(200, verdict.response, "offload", verdict)
    return Served(verdict.status, verdict.body(), "refuse", verdict)
