"""The caller's headers, parsed and checked in one place (pure).

- ``X-Data-Class``: public | internal | sensitive (any case); absent: the policy default.
- ``X-Route``: auto | local | cloud (any case); absent or empty: auto.
- ``X-Tenant``: 1 to 64 characters; absent: ``default``. Client-asserted: it scopes the
  cache and the audit trail, it is not authentication.

A value the gateway cannot act on is a :class:`HeaderError` (answered 400), one error
code per header: ``invalid_data_class``, ``invalid_route``, ``invalid_tenant``. A header
sent more than once is such a value too: which copy a proxy or a framework keeps
differs, so the gateway acts on none of them.

Headers come as a mapping or, to keep repeated names, as ``(name, value)`` pairs (the
front passes Starlette's ``request.headers.items()``, which keeps every copy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from mmo_serving.config import DataClass

Route = Literal["auto", "local", "cloud"]
DATA_CLASSES: tuple[DataClass, ...] = get_args(DataClass)
ROUTES: tuple[Route, ...] = get_args(Route)
DEFAULT_TENANT = "default"
MAX_TENANT_LEN = 64

Headers = Mapping[str, str] | Sequence[tuple[str, str]]


class HeaderError(ValueError):
    def __init__(self, header: str, message: str, code: str) -> None:
        super().__init__(f"header {header}: {message}")
        self.header = header
        self.message = f"header {header}: {message}"
        self.code = code


@dataclass(frozen=True)
class CallerHeaders:
    data_class: DataClass | None  # None: not declared
    route: Route
    tenant: str


def _pairs(headers: Headers) -> Iterable[tuple[str, str]]:
    return headers.items() if isinstance(headers, Mapping) else headers


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of header ``name`` (any case), stripped, in the order received."""
    wanted = name.lower()
    return [v.strip() for k, v in _pairs(headers) if k.lower() == wanted]


def header(headers: Headers, name: str) -> str | None:
    """The first value of header ``name`` (any case), stripped; None when absent."""
    found = header_values(headers, name)
    return found[0] if found else None


def _once(headers: Headers, name: str, code: str) -> str | None:
    found = header_values(headers, name)
    if len(found) > 1:
        raise HeaderError(name, f"sent {len(found)} times; send it once", code)
    return found[0] if found else None


def _data_class(raw: str | None) -> DataClass | None:
    if raw is None or raw == "":
        return None
    for value in DATA_CLASSES:
        if raw.lower() == value:
            return value
    # the length only: the value itself may be anything the client sent
    raise HeaderError(
        "X-Data-Class",
        f"unknown value (length {len(raw)}); allowed: {', '.join(DATA_CLASSES)}",
        "invalid_data_class",
    )


def _route(raw: str | None) -> Route:
    if raw is None or raw == "":
        return "auto"
    for value in ROUTES:
        if raw.lower() == value:
            return value
    raise HeaderError(
        "X-Route",
        f"unknown value (length {len(raw)}); allowed: {', '.join(ROUTES)}",
        "invalid_route",
    )


def _tenant(raw: str | None) -> str:
    if raw is None:
        return DEFAULT_TENANT
    if not raw or len(raw) > MAX_TENANT_LEN:
        raise HeaderError(
            "X-Tenant",
            f"must be 1 to {MAX_TENANT_LEN} characters, got {len(raw)}",
            "invalid_tenant",
        )
    return raw


def parse_headers(headers: Headers) -> CallerHeaders:
    return CallerHeaders(
        data_class=_data_class(_once(headers, "X-Data-Class", "invalid_data_class")),
        route=_route(_once(headers, "X-Route", "invalid_route")),
        tenant=_tenant(_once(headers, "X-Tenant", "invalid_tenant")),
    )
