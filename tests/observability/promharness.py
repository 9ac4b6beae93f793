"""Run every Grafana panel query of the mmo dashboards against a real Prometheus.

`PrometheusServer` starts Debian's `prometheus` binary on a free port with a generated
config that scrapes the given targets every second and renames `ray_(mmo_.*)` to `$1`
(as the PodMonitor and manifests/prometheus/prometheus.yml do). `panel_queries` extracts
every panel target's `expr`; `substitute` replaces Grafana's template variables;
`empty_queries` asks the HTTP API and lists the queries that returned nothing.

Used by test_dashboards_harness.py (a fake exporter) and test_dashboards_live.py (`mmo up`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ports import free_port

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "charts" / "mmo" / "dashboards"
RAY_RENAME = {
    "source_labels": ["__name__"],
    "regex": "ray_(mmo_.*)",
    "target_label": "__name__",
    "replacement": "$1",
    "action": "replace",
}
# Grafana's built-in variables, as they would be for a short test window.
BUILTINS = {"__rate_interval": "20s", "__interval": "5s", "__range": "5m"}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.ref}]: {self.expr}"


def panel_queries(paths: Iterable[Path] | None = None) -> list[PanelQuery]:
    """Every target of every panel (rows' nested panels included) of the dashboards."""
    out: list[PanelQuery] = []
    for path in sorted(paths or DASHBOARD_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        panels = list(board.get("panels", []))
        while panels:
            panel = panels.pop(0)
            panels.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append(
                        PanelQuery(board["title"], panel["title"], target["refId"], target["expr"])
                    )
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace `$var`, `${var}`, `${var:fmt}` and `[[var]]` as Grafana would."""
    values = {**BUILTINS, **variables}

    def repl(match: re.Match[str]) -> str:
        name = match.group("a") or match.group("b") or match.group("c")
        if name not in values:
            raise KeyError(f"no value for template variable ${name} in {expr}")
        return values[name]

    pattern = r"\$\{(?P<a>\w+)(?::\w+)?\}|\[\[(?P<b>\w+)\]\]|\$(?P<c>\w+)"
    return re.sub(pattern, repl, expr)


def dashboard_variables(paths: Iterable[Path] | None = None) -> dict[str, str]:
    """Each query variable at its "All" value (allValue), as a dashboard opens by default."""
    found: dict[str, str] = {}
    for path in sorted(paths or DASHBOARD_DIR.glob("*.json")):
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] == "query":
                found[var["name"]] = var.get("allValue") or ".*"
    return found


class PrometheusServer:
    """A private Prometheus process scraping `targets` (host:port) every second."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        labels: dict[str, str] | None = None,
        rule_files: list[Path] | None = None,
    ):
        self.workdir = workdir
        self.targets = targets
        self.labels = labels or {}
        self.rule_files = rule_files or []
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {
                # above Ray's metrics report interval: a scrape clears Ray's gauges
                "scrape_interval": "3s",
                "evaluation_interval": "1s",
                "scrape_timeout": "1s",
            },
            "scrape_configs": [
                {
                    "job_name": "mmo",
                    "static_configs": [{"targets": self.targets, "labels": self.labels}],
                    "metric_relabel_configs": [RAY_RENAME],
                }
            ],
        }
        if self.rule_files:
            config["rule_files"] = [str(p) for p in self.rule_files]
        return config

    def start(self, timeout: float = 60) -> PrometheusServer:
        exe = shutil.which("prometheus")
        if exe is None:
            raise RuntimeError("prometheus not found: install the Debian package `prometheus`")
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config()))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    exe,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait(lambda: self._get("/-/ready") is not None, timeout, "Prometheus ready")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return bytes(resp.read())
        except OSError:
            return None

    def _wait(self, ok: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            if ok():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what}; log: {self.log.read_text()[-2000:]}")

    def targets_health(self) -> list[str]:
        raw = self._get("/api/v1/targets")
        if raw is None:
            return []
        return [t["health"] for t in json.loads(raw)["data"]["activeTargets"]]

    def wait_targets_up(self, timeout: float = 60) -> None:
        def all_up() -> bool:
            health = self.targets_health()
            return len(health) == len(self.targets) and set(health) == {"up"}

        self._wait(all_up, timeout, f"targets {self.targets} up")

    def query(self, expr: str) -> list[dict[str, Any]]:
        raw = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if raw is None:
            raise RuntimeError(f"query failed (bad PromQL?): {expr}")
        body = json.loads(raw)
        if body["status"] != "success":
            raise RuntimeError(f"{expr}: {body}")
        result = body["data"]["result"]
        return result if isinstance(result, list) else [result]


def is_data(result: list[dict[str, Any]]) -> bool:
    """At least one sample whose value is a number (NaN, e.g. 0/0, is "No data" in Grafana)."""
    for series in result:
        value = series.get("value", [None, "NaN"])[1]
        if value not in ("NaN", "+Inf", "-Inf"):
            return True
    return False


def empty_queries(
    prom: PrometheusServer,
    queries: list[PanelQuery],
    variables: dict[str, str],
    timeout: float = 60,
) -> list[str]:
    """Poll until every query returns data or `timeout` passes; return those still empty."""
    pending = list(queries)
    deadline = time.monotonic() + timeout
    while True:
        pending = [q for q in pending if not is_data(prom.query(substitute(q.expr, variables)))]
        if not pending or time.monotonic() > deadline:
            return [str(q) for q in pending]
        time.sleep(2)
