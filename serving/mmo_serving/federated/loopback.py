"""A real local federation on loopback: one SuperLink, N SuperNodes, ``flwr run``.

Every component is a separate process started from the Flower CLI entry points of the
running interpreter's environment (``flower-superlink``, ``flower-supernode``, ``flwr``)
with ``--insecure`` on 127.0.0.1 and free ports; the SuperNodes run the ClientApp in
subprocesses, the SuperLink runs the ServerApp in one. Runtime dependency installation
is off (the app's code is the installed ``mmo_serving.federated``), so nothing is
downloaded. Every process is started in its own process group and that group is ended
when the run finishes or fails.

As in a cluster, the SuperNodes run only bundles signed by a trusted key
(``--trusted-entities``): :func:`run_local` signs the project's bundle (with a key made
for the work directory, or the one given), publishes it to an app registry served from
this process (:mod:`.registry`, the SuperLink's ``FLWR_SUPERGRID_API_URL``) and runs it
by name; ``flwr run DIR`` of an unsigned project is refused by every site.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mmo_serving.federated import registry, trust
from mmo_serving.federated.bundle import (
    DEFAULT_RUN_CONFIG,
    check_run_config,
    sign_and_publish,
    toml_value,
)

FEDERATION = "mmo-local"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run this with the python of a venv that has flwr "
            "(make federated-venv creates .venv-federated)"
        )
    return str(path)


def _key_values(values: Mapping[str, Any]) -> str:
    """``k=v ...`` as ``--node-config`` and ``flwr run -c`` read it."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


@dataclass
class LocalFederation:
    """Processes of one local federation (use as a context manager): the SuperNodes
    trust the keys in ``trusted_entities``; the SuperLink fetches named apps from the
    registry directory ``registry_root``."""

    work: Path
    trusted_entities: Path
    registry_root: Path
    sites: int = 3
    node_extra: Mapping[str, Any] = field(default_factory=dict)
    site_extra: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)  # by site
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0
    registry_server: ThreadingHTTPServer | None = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.work / "flwr-home")
        env["PYTHONUNBUFFERED"] = "1"
        # the SuperLink and SuperNodes start flower-superexec / flwr-*app by name
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("OMP_NUM_THREADS", "1")
        if self.registry_server is not None:
            env["FLWR_SUPERGRID_API_URL"] = registry.api_url(self.registry_server)
        return env

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 (closed with the proc)
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True
        )
        log.close()
        self.procs.append(proc)
        # process-group ids, for a supervisor that must clean up if this process dies
        with open(self.work / "pgids.txt", "a") as f:
            f.write(f"{proc.pid}\n")
        return proc

    def __enter__(self) -> LocalFederation:
        self.work.mkdir(parents=True, exist_ok=True)
        home = self.work / "flwr-home"
        home.mkdir(exist_ok=True)
        self.port = free_port()
        (home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{FEDERATION}"\n\n'
            f"[superlink.{FEDERATION}]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            "insecure = true\n"
        )
        try:
            self.registry_server = registry.serve_in_thread(self.registry_root)
            link = self._start(
                "superlink",
                [
                    _bin("flower-superlink"),
                    "--insecure",
                    "--disable-runtime-dependency-installation",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
            )
            wait_port(self.port, link)
            for i in range(self.sites):
                node = {
                    "partition-id": i,
                    "num-partitions": self.sites,
                    "log-dir": str(self.work / "site-logs"),
                    "cache-dir": str(self.work / f"site-{i}-cache"),
                    **self.node_extra,
                    **self.site_extra.get(i, {}),
                }
                self._start(
                    f"supernode-{i}",
                    [
                        _bin("flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{self.port}",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        _key_values(node),
                        "--trusted-entities",
                        str(self.trusted_entities),
                    ],
                )
        except BaseException:
            self.close()
            raise
        return self

    def run(
        self, app: str, run_config: Mapping[str, Any], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """``flwr run APP mmo-local --stream -c RUN_CONFIG``: returns when the run has
        ended. ``APP``: an app spec in the registry (``@mmo/mmo-federated==0.1.0``) or
        the directory of an app project (a bundle without signature)."""
        check_run_config(run_config)
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{_name(proc)} exited early ({proc.returncode}); see logs")
        overrides = ["--run-config", _key_values(run_config)] if run_config else []
        return subprocess.run(
            [_bin("flwr"), "run", app, FEDERATION, "--stream", *overrides],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        if self.registry_server is not None:
            self.registry_server.shutdown()
            self.registry_server.server_close()
            self.registry_server = None
        for proc in self.procs:
            _end_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            _end_group(proc, signal.SIGKILL)
            proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _name(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    return str(args[0]) if isinstance(args, list) else str(args)


def _end_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # the group the process leads (start_new_session)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until 127.0.0.1:port accepts connections (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{_name(proc)} exited with {proc.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def secure_node_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """What a site vouches for when the run aggregates securely: every sum holds
    ``min-clients`` updates (its noise is divided by their square root)."""
    cfg = {**DEFAULT_RUN_CONFIG, **run_config}
    return {"secure-shares": int(cfg["min-clients"])} if cfg["secure-aggregation"] else {}


def local_trust(trust_dir: Path, signing_key: Path | None) -> tuple[Path, Path]:
    """(signing key, trusted-entities file) of a local federation: the given key and a
    trust file naming it, or a key made for (and kept in) ``trust_dir``."""
    if signing_key is None:
        if (trust_dir / trust.SIGNING_KEY).is_file():
            return trust_dir / trust.SIGNING_KEY, trust_dir / trust.TRUSTED_ENTITIES
        return trust.generate_key(trust_dir)
    public = trust.load_key(signing_key).public_key()
    trust_dir.mkdir(parents=True, exist_ok=True)
    path = trust_dir / trust.TRUSTED_ENTITIES
    path.write_text(trust.trusted_entities_text([public]))
    return signing_key, path


def run_local(
    work: Path,
    run_config: Mapping[str, Any],
    *,
    sites: int = 3,
    timeout: float = 600,
    node_extra: Mapping[str, Any] | None = None,
    site_extra: Mapping[int, Mapping[str, Any]] | None = None,
    signing_key: Path | None = None,
) -> dict[str, Any]:
    """Run the project's signed bundle in one federation end to end; returns paths and
    the ``flwr run`` output. ``signing_key``: the key that signs the bundle (the sites
    trust its public half); by default one made once for ``work`` (``work/trust``)."""
    out = work / "out"
    key, trusted = local_trust(work / "trust", signing_key)
    spec = sign_and_publish(work / "registry", key)
    extra = {**secure_node_config(run_config), **(node_extra or {})}
    with LocalFederation(
        work,
        trusted_entities=trusted,
        registry_root=work / "registry",
        sites=sites,
        node_extra=extra,
        site_extra=site_extra or {},
    ) as fed:
        proc = fed.run(spec, {**run_config, "out-dir": str(out)}, timeout)
    return {
        "returncode": proc.returncode,
        "stdout": proc.stdout[-20000:],
        "stderr": proc.stderr[-20000:],
        "out_dir": str(out),
        "site_logs": str(work / "site-logs"),
        "done": (out / "done.json").is_file(),
    }
