"""The seam between the Serve ingress and the runtime gateway (issue 7).

The ingress builds one :class:`RequestInfo` per API request, after schema validation and
before the cache and the model, and asks the gateway for a :class:`Decision`:

    gateway = load_gateway(args)          # mmo_serving.gateway.build_gateway(args) if present
    decision = await gateway.decide(info)

- ``local``: serve with the local model. ``decision.data_class`` (public|internal|sensitive)
  is part of the cache key, so the cache never mixes classes (nor tenants).
- ``refuse``: the ingress answers ``decision.status`` (403 by default) with the OpenAI
  error body ``{"error": {"message": decision.reason, "type": "policy_error",
  "param": None, "code": "policy_refused"}}``.
- ``offload``: the gateway has already served the request elsewhere (hybrid mode) and
  puts the OpenAI-shaped JSON it got in ``decision.response``; the ingress returns it
  (as server-sent events when the client asked for ``stream``). A failed offload that
  the gateway served locally instead is a ``local`` decision (the gateway audits it as
  ``fallback``).

The gateway counts its own decisions (``mmo_policy_decisions_total`` via
:mod:`mmo_serving.metrics`) and writes the audit line. Pure module: no ray, no torch.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mmo_serving.config import AppArgs

DataClass = Literal["public", "internal", "sensitive"]
DATA_CLASSES: tuple[str, ...] = ("public", "internal", "sensitive")
DATA_CLASS_HEADER = "x-data-class"
TENANT_HEADER = "x-tenant"
ROUTE_HEADER = "x-route"
DEFAULT_TENANT = "default"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestInfo:
    request_id: str
    route: str  # "/v1/chat/completions" or "/v1/embeddings"
    tenant: str  # X-Tenant header, "default" when absent
    headers: Mapping[str, str]  # lower-cased names
    texts: list[str]  # every text the request carries, in order
    image_urls: list[str]  # every image URL as sent (data: or remote), in order
    # the validated request (schema fields only); an offload sends a copy rebuilt from it
    body: dict[str, Any]
    queue_depth: int  # requests in flight in this replica, this one included
    stream: bool = False


@dataclass
class Decision:
    action: Literal["local", "offload", "refuse"]
    data_class: DataClass
    reason: str = ""
    status: int = 403
    response: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Gateway(Protocol):
    async def decide(self, info: RequestInfo) -> Decision: ...


class PassThroughGateway:
    """No isolation policy: serve everything locally.

    The data class is the ``X-Data-Class`` header (validated by the ingress) or the
    policy default. Used when ``mmo_serving.gateway`` is not installed.
    """

    def __init__(self, args: AppArgs) -> None:
        self.mode = args.isolation.mode
        self.default_class: DataClass = args.isolation.default_data_class

    async def decide(self, info: RequestInfo) -> Decision:
        header = (info.headers.get(DATA_CLASS_HEADER) or "").strip().lower()
        data_class: DataClass = header if header in DATA_CLASSES else self.default_class  # type: ignore[assignment]
        from mmo_serving.metrics import serving_metrics

        serving_metrics().policy_decision(mode=self.mode, decision="local", data_class=data_class)
        return Decision(action="local", data_class=data_class, reason="no gateway installed")


def load_gateway(args: AppArgs) -> Gateway:
    """``mmo_serving.gateway.build_gateway(args)`` when that module exists, else pass-through.

    A gateway module that exists but fails to import or lacks ``build_gateway`` is an
    error (fail closed): the isolation policy must not be skipped silently.
    """
    try:
        module = importlib.import_module("mmo_serving.gateway")
    except ModuleNotFoundError as exc:
        if exc.name != "mmo_serving.gateway":
            raise
        log.warning("mmo_serving.gateway not installed: serving without an isolation gateway")
        return PassThroughGateway(args)
    build = getattr(module, "build_gateway", None)
    if build is None:
        raise RuntimeError("mmo_serving.gateway has no build_gateway(args) function")
    gateway: Gateway = build(args)
    return gateway
