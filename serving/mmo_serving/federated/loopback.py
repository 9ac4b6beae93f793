"""A real local federation on loopback: one SuperLink, N SuperNodes, ``flwr run``.

Every component is a separate process started from the Flower CLI entry points of the
running interpreter's environment (``flower-superlink``, ``flower-supernode``, ``flwr``)
with ``--insecure`` on 127.0.0.1 and free ports; the SuperNodes run the ClientApp in
subprocesses, the SuperLink runs the ServerApp in one. Runtime dependency installation
is off (the app's code is the installed ``mmo_serving.federated``), so nothing is
downloaded. Every process is started in its own process group and that group is ended
when the run finishes or fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP_NAME = "mmo-federated"
FEDERATION = "mmo-local"

DEFAULT_RUN_CONFIG: dict[str, Any] = {
    "num-rounds": 3,
    "min-clients": 3,
    "model-source": "builtin://shapes-moe",
    "head-init": "checkpoint",
    "clip-norm": 1.0,
    "noise-multiplier": 1.0,
    "local-epochs": 2,
    "lr": 0.01,
    "scenes-per-site": 120,
    "seed": 0,
    "round-timeout": 600.0,
    "out-dir": "",
    "secure-aggregation": False,
    "keep-received": False,
}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def write_app(app_dir: Path, run_config: Mapping[str, Any] | None = None) -> Path:
    """The Flower app project (a pyproject.toml whose components are ours)."""
    cfg = {**DEFAULT_RUN_CONFIG, **(run_config or {})}
    unknown = sorted(set(cfg) - set(DEFAULT_RUN_CONFIG))
    if unknown:
        raise ValueError(f"unknown run config keys {unknown}; valid: {sorted(DEFAULT_RUN_CONFIG)}")
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        f'name = "{APP_NAME}"',
        'version = "0.1.0"',
        'description = "mmo: federated fine-tuning of the answer head"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "mmo"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "mmo_serving.federated.server:app"',
        'clientapp = "mmo_serving.federated.client:app"',
        "",
        "[tool.flwr.app.config]",
        *(f'"{k}" = {_toml_value(v)}' for k, v in cfg.items()),
        "",
    ]
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text("\n".join(lines))
    return app_dir


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


def _node_config(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_toml_value(v)}" for k, v in values.items())


@dataclass
class LocalFederation:
    """Processes of one local federation (use as a context manager)."""

    work: Path
    sites: int = 3
    node_extra: Mapping[str, Any] = field(default_factory=dict)
    site_extra: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)  # by site
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.work / "flwr-home")
        env["PYTHONUNBUFFERED"] = "1"
        # the SuperLink and SuperNodes start flower-superexec / flwr-*app by name
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("OMP_NUM_THREADS", "1")
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
                        _node_config(node),
                    ],
                )
        except BaseException:
            self.close()
            raise
        return self

    def run(self, app_dir: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        """``flwr run APP mmo-local --stream``: returns when the run has ended."""
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{_name(proc)} exited early ({proc.returncode}); see logs")
        return subprocess.run(
            [_bin("flwr"), "run", str(app_dir), FEDERATION, "--stream"],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
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


def run_local(
    work: Path,
    run_config: Mapping[str, Any],
    *,
    sites: int = 3,
    timeout: float = 600,
    node_extra: Mapping[str, Any] | None = None,
    site_extra: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run one federation end to end; returns paths and the ``flwr run`` output."""
    out = work / "out"
    app = write_app(work / "app", {**run_config, "out-dir": str(out)})
    extra = {**secure_node_config(run_config), **(node_extra or {})}
    with LocalFederation(work, sites=sites, node_extra=extra, site_extra=site_extra or {}) as fed:
        proc = fed.run(app, timeout)
    return {
        "returncode": proc.returncode,
        "stdout": proc.stdout[-20000:],
        "stderr": proc.stderr[-20000:],
        "out_dir": str(out),
        "site_logs": str(work / "site-logs"),
        "done": (out / "done.json").is_file(),
    }
