"""The project's app registry: signed Flower App bundles, served the way Flower Hub does.

Flower 1.42 gives a FAB verification records only when the SuperLink fetched it from an
app registry: ``flwr run @ACCOUNT/APP==VERSION`` makes the SuperLink POST
``{"app_id", "app_version", "flwr_version"}`` to ``$FLWR_SUPERGRID_API_URL/hub/fetch-fab``
and expect ``{"fab_url", "verifications": [record, ...]}``, then GET the bundle from
``fab_url``. This module answers both from a directory that :func:`publish` fills
(``ROOT/ACCOUNT/APP/VERSION.fab`` and ``VERSION.json``, the records of
:func:`.trust.sign_fab`); start the SuperLink with ``FLWR_SUPERGRID_API_URL`` pointing at it.

The registry holds no secret and need not be trusted: a SuperNode checks each record
against the bundle's bytes and its own trusted keys, so a registry (or SuperLink) that
swaps bundles or records only gets the run refused.
"""

from __future__ import annotations

import json
import re
import socketserver
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

API_PREFIX = "/v1"  # FLWR_SUPERGRID_API_URL = http://HOST:PORT/v1
_APP_ID = re.compile(r"^@([a-z0-9][a-z0-9_-]*)/([a-z0-9][a-z0-9_-]*)$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _app_dir(root: Path, app_id: str) -> Path:
    m = _APP_ID.match(app_id)
    if not m:
        raise ValueError(f"app id {app_id!r} is not of the form '@account/app' (a-z, 0-9, -, _)")
    return root / m.group(1) / m.group(2)


def publish(
    root: Path, app_id: str, version: str, fab: bytes, records: Sequence[dict[str, Any]]
) -> Path:
    """Store a bundle and its verification records; returns the bundle's path."""
    if not _VERSION.match(version):
        raise ValueError(f"app version {version!r} is not of the form x.y.z (digits)")
    app_dir = _app_dir(root, app_id)
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / f"{version}.fab").write_bytes(fab)
    (app_dir / f"{version}.json").write_text(json.dumps(list(records), indent=1) + "\n")
    return app_dir / f"{version}.fab"


def _latest(app_dir: Path) -> str | None:
    versions = [p.stem for p in app_dir.glob("*.fab") if _VERSION.match(p.stem)]
    return max(versions, key=lambda v: tuple(map(int, v.split(".")))) if versions else None


def lookup(root: Path, app_id: str, version: str | None) -> tuple[Path, list[dict[str, Any]]]:
    """The bundle of ``app_id`` (``version`` or the latest) and its records."""
    app_dir = _app_dir(root, app_id)
    if version is not None and not _VERSION.match(version):
        raise LookupError(f"app version {version!r} is not of the form x.y.z (digits)")
    found = version if version is not None else _latest(app_dir)
    fab = app_dir / f"{found}.fab"
    if found is None or not fab.is_file():
        raise LookupError(f"{app_id}=={version or 'latest'} is not in this registry")
    records = json.loads((app_dir / f"{found}.json").read_text())
    return fab, records


class _Handler(BaseHTTPRequestHandler):
    root: Path

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        self._reply(status, json.dumps(doc).encode(), "application/json")

    def do_POST(self) -> None:
        if self.path != f"{API_PREFIX}/hub/fetch-fab":
            self._json(404, {"detail": f"no such endpoint {self.path}"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if not isinstance(body, dict) or not isinstance(body.get("app_id"), str):
                raise ValueError('expected a JSON object with "app_id" (and "app_version")')
            version = body.get("app_version")
            fab, records = lookup(
                self.root, body["app_id"], None if version is None else str(version)
            )
        except (ValueError, LookupError) as e:
            self._json(404, {"detail": str(e)})
            return
        rel = fab.relative_to(self.root).as_posix()
        host = self.headers.get("Host") or _host_port(self.server)
        self._json(200, {"fab_url": f"http://{host}/fab/{rel}", "verifications": records})

    def do_GET(self) -> None:
        rel = self.path.removeprefix("/fab/")
        parts = rel.split("/")
        if (
            not self.path.startswith("/fab/")
            or len(parts) != 3
            or not _APP_ID.match(f"@{parts[0]}/{parts[1]}")
            or not _VERSION.match(parts[2].removesuffix(".fab"))
            or not (self.root / rel).is_file()
        ):
            self._json(404, {"detail": f"no bundle at {self.path}"})
            return
        self._reply(200, (self.root / rel).read_bytes(), "application/octet-stream")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are visible in the SuperLink's log


def server(root: Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A registry server for ``root`` (not yet serving; ``port`` 0: a free one)."""
    handler = type("RegistryHandler", (_Handler,), {"root": root.resolve()})
    return ThreadingHTTPServer((host, port), handler)


def serve_in_thread(root: Path, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``root`` on a free port from a daemon thread; ``shutdown()`` stops it."""
    srv = server(root, host)
    threading.Thread(target=srv.serve_forever, name="mmo-fab-registry", daemon=True).start()
    return srv


def _host_port(srv: socketserver.BaseServer) -> str:
    addr = srv.server_address
    assert isinstance(addr, tuple), addr  # an AF_INET server
    return f"{addr[0]}:{addr[1]}"


def api_url(srv: ThreadingHTTPServer) -> str:
    """What the SuperLink's ``FLWR_SUPERGRID_API_URL`` must be."""
    return f"http://{_host_port(srv)}{API_PREFIX}"
