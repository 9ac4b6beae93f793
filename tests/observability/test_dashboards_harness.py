"""The dashboard-query harness, proven against a fake exporter with the contract's metrics:
every panel returns data, and a panel on a metric nothing exports is reported empty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def fake_prometheus(
    promharness: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    serving_port, operator_port = promharness.free_port(), promharness.free_port()
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO / "serving")])
    )
    exporter = subprocess.Popen(
        [sys.executable, str(HERE / "fake_mmo_exporter.py"), str(serving_port), str(operator_port)],
        env=env,
    )
    workdir = tmp_path_factory.mktemp("prom")
    prom = promharness.PrometheusServer(
        workdir,
        [f"127.0.0.1:{serving_port}", f"127.0.0.1:{operator_port}"],
        labels={"namespace": "ml", "model": "fake"},
    )
    try:
        prom.start()
        prom.wait_targets_up(timeout=60)
        yield prom
    finally:
        prom.stop()
        exporter.terminate()
        exporter.wait(timeout=20)


def test_substitute_handles_grafana_variable_forms(promharness: ModuleType) -> None:
    expr = 'rate(x{a=~"$ns", b=~"${model}", c=~"[[layer]]", d=~"${mode:regex}"}[$__rate_interval])'
    out = promharness.substitute(expr, {"ns": ".*", "model": "m", "layer": "0", "mode": "private"})
    assert out == 'rate(x{a=~".*", b=~"m", c=~"0", d=~"private"}[20s])'
    with pytest.raises(KeyError, match="unknown"):
        promharness.substitute('x{a=~"$unknown"}', {})


def test_harness_finds_every_panel_query(promharness: ModuleType) -> None:
    queries = promharness.panel_queries()
    boards = {q.dashboard for q in queries}
    assert boards == {"mmo / Overview", "mmo / Experts", "mmo / Isolation", "mmo / Operator"}
    expected = sum(
        len(t)
        for p in sorted((REPO / "charts/mmo/dashboards").glob("*.json"))
        for t in (panel["targets"] for panel in json.loads(p.read_text())["panels"])
    )
    assert len(queries) == expected


def test_every_panel_returns_data_from_the_fake_exporter(
    promharness: ModuleType, fake_prometheus: Any
) -> None:
    variables = promharness.dashboard_variables()
    empty = promharness.empty_queries(
        fake_prometheus, promharness.panel_queries(), variables, timeout=90
    )
    assert empty == []


def test_a_panel_on_an_unexported_metric_is_reported(
    promharness: ModuleType, fake_prometheus: Any, tmp_path: Path
) -> None:
    board = json.loads((REPO / "charts/mmo/dashboards/overview.json").read_text())
    board["panels"] = board["panels"][:1]
    board["panels"][0]["targets"] = [
        {
            "refId": "A",
            "expr": 'sum(rate(mmo_not_exported_total{model=~"$model"}[$__rate_interval]))',
        }
    ]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(board))
    queries = promharness.panel_queries([path])
    empty = promharness.empty_queries(fake_prometheus, queries, {"model": ".*"}, timeout=3)
    assert len(empty) == 1 and "mmo_not_exported_total" in empty[0]


def test_relabel_turns_ray_names_into_contract_names(fake_prometheus: Any) -> None:
    assert fake_prometheus.query("ray_mmo_requests_total") == []
    assert fake_prometheus.query("mmo_requests_total")
