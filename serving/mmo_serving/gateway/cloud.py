"""OpenAI-compatible client for the hybrid cloud endpoint (httpx, async).

- ``HybridArgs.endpoint`` is the base URL as OpenAI SDKs take it (``https://host/v1``);
  the route is appended (``/chat/completions``, ``/completions``, ``/embeddings``).
  ``https`` only, except loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``), so
  that a local fake endpoint works under ``mmo up``.
- Credentials: the API key is read from the environment variable named by
  ``HybridArgs.credentials_env`` (default ``MMO_CLOUD_API_KEY``; in a cluster the
  operator mounts the credentials Secret there, under ``mmo up`` the user exports it)
  and sent as ``Authorization: Bearer``. Missing key: the endpoint is unavailable, and
  requests are served locally.
- ``HybridArgs.ca_bundle``: a PEM file of CAs to trust for the endpoint (a self-signed
  local endpoint); otherwise the system trust store.
- Each attempt is bounded by ``timeout_s``; timeouts, connection errors, 429 and 5xx are
  retried ``retries`` times with exponential backoff; other statuses are not. After a
  failure the endpoint is skipped for ``cooldown_s`` so that an outage does not add the
  retry latency to every request. Redirects are not followed.
- Errors never include the response body or the request: only status and error type.
  A :class:`CloudError` says whether the body was sent (``sent``): true once any
  attempt got past connecting, whatever happened next (a 3xx, 4xx or 5xx, a timeout
  waiting for the answer, an answer that is not JSON, a bad ``Content-Encoding``, JSON
  nested too deeply to read), so that the audit trail can say the endpoint may hold it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from mmo_serving.config import HybridArgs

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class CloudError(RuntimeError):
    """The endpoint could not serve the request (the gateway then serves it locally).

    ``sent``: the body left (the endpoint may have received it) before the failure."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


# Failures before any byte of the request left: nothing was sent.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: str) -> None:
    """Raise ``ValueError`` unless ``endpoint`` is https (or http on loopback)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and _is_loopback(host):
        return
    raise ValueError(
        f"hybrid endpoint {endpoint!r}: must be an https:// URL "
        "(http:// only for loopback hosts such as 127.0.0.1)"
    )


class CloudClient:
    def __init__(
        self,
        args: HybridArgs,
        *,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: float = 0.1,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_endpoint(args.endpoint)
        self.args = args
        self._env = env if env is not None else os.environ
        self._transport = transport
        self._backoff_s = backoff_s
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._down_until = 0.0
        self._client: httpx.AsyncClient | None = None

    def url(self, path: str) -> str:
        return self.args.endpoint.rstrip("/") + "/" + path.lstrip("/")

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.args.ca_bundle:
                verify = ssl.create_default_context(cafile=self.args.ca_bundle)
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.args.timeout_s),
                verify=verify,
                transport=self._transport,
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment: egress is policy
            )
        return self._client

    def _fail(self, message: str, sent: bool) -> CloudError:
        self._down_until = self._clock() + self._cooldown_s
        return CloudError(message, sent=sent)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``endpoint/path``; the JSON object answered, or CloudError."""
        if self._clock() < self._down_until:
            raise CloudError("endpoint skipped: it failed less than cooldown_s ago")
        key = self._env.get(self.args.credentials_env, "")
        if not key:
            raise CloudError(
                f"no API key: environment variable {self.args.credentials_env} is not set"
            )
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        attempts = self.args.retries + 1
        last = "no attempt"
        sent = False
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                resp = await self._http().post(self.url(path), json=body, headers=headers)
            except httpx.TimeoutException as exc:
                sent = sent or not isinstance(exc, _NOT_SENT)
                last = f"timeout after {self.args.timeout_s}s"
                continue
            except httpx.TransportError as exc:
                sent = sent or not isinstance(exc, _NOT_SENT)
                last = f"connection error ({type(exc).__name__})"
                continue
            except httpx.DecodingError:
                raise self._fail("a reply whose Content-Encoding cannot be decoded", True) from None
            sent = True
            if resp.status_code == 200:
                try:
                    data = resp.json()
                except ValueError:
                    raise self._fail("HTTP 200 with a body that is not JSON", sent) from None
                except RecursionError:
                    raise self._fail("HTTP 200 with JSON nested too deeply", sent) from None
                if not isinstance(data, dict):
                    raise self._fail("HTTP 200 with a JSON body that is not an object", sent)
                return data
            last = f"HTTP {resp.status_code}"
            if resp.status_code not in RETRY_STATUSES:
                raise self._fail(f"{last} (not retried)", sent)
        raise self._fail(f"{last} after {attempts} attempt(s)", sent)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
