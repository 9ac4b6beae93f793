"""What the front asks the gateway and what it answers (pure).

The front builds one :class:`RequestInfo` per API request, after schema validation and
before the cache and the engine, and awaits ``Gateway.decide(info)``:

- :class:`Local`: serve it with the local engine. ``data_class`` and ``tenant`` scope the
  cache, so it never mixes classes or tenants. ``outcome`` is ``fallback`` when an
  offload failed and the request is served locally instead.
- :class:`Offloaded`: the gateway has already served it elsewhere (hybrid mode);
  ``response`` is the OpenAI JSON it got back (always complete: sent with
  ``stream: false``).
- :class:`Refused`: answer ``status`` with the OpenAI error body.

A refusal's audit line is written by ``decide``. ``Local`` and ``Offloaded`` carry theirs
as a draft (``audit``): the front writes it with ``Gateway.served`` once it knows how the
request ended (answered, or failed after the verdict), so that every request has exactly
one line and it tells the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mmo_serving.config import DataClass
from mmo_serving.gateway.headers import Headers


@dataclass(frozen=True)
class RequestInfo:
    request_id: str
    route: str  # "/v1/chat/completions" or "/v1/embeddings"
    # as received (names in any case); (name, value) pairs keep a repeated header
    headers: Headers
    # the validated request (schema fields only); an offload sends a copy rebuilt from it
    body: dict[str, Any]
    queue_depth: int  # requests in flight in this replica, this one included


# The audit line of a verdict, as the gateway drafted it (status 200, no error)
AuditDraft = dict[str, Any]


@dataclass(frozen=True)
class Local:
    data_class: DataClass
    tenant: str
    outcome: Literal["local", "fallback"] = "local"
    audit: AuditDraft = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Offloaded:
    data_class: DataClass  # the class of what was sent
    tenant: str
    response: dict[str, Any]
    audit: AuditDraft = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Refused:
    status: int  # 400: a header the gateway cannot act on; 403: the policy says no
    message: str
    code: str
    param: str | None = None

    @property
    def error_type(self) -> str:
        return "invalid_request_error" if self.status == 400 else "policy_error"

    def body(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


Verdict = Local | Offloaded | Refused
