"""The dashboard-query harness, proven against a fake exporter with the contract's metrics and
one with vLLM 0.29's engine metrics (fake_vllm_exporter.py): every panel returns data, every
vLLM family is scraped under the name the dashboards use, the engine alerts evaluate on the
real names, and a panel on a metric nothing exports is reported empty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


RULES = REPO / "charts" / "mmo" / "rules"
# The engine alerts and what they need: thresholds and each model's effective latency target.
RULE_FILES = [RULES / n for n in ("mmo-thresholds.yaml", "mmo-serving.yaml", "mmo-engine.yaml")]
ENGINE_ALERTS = ["MmoEngineKvCacheSaturated", "MmoTimeToFirstTokenAboveTarget"]


@pytest.fixture(scope="module")
def fake_prometheus(
    promharness: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    serving_port, operator_port = promharness.free_port(), promharness.free_port()
    vllm_port = promharness.free_port()
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO / "serving")])
    )
    exporters = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "fake_mmo_exporter.py"),
                str(serving_port),
                str(operator_port),
            ],
            env=env,
        ),
        subprocess.Popen(
            [sys.executable, str(HERE / "fake_vllm_exporter.py"), str(vllm_port), "fake"], env=env
        ),
    ]
    workdir = tmp_path_factory.mktemp("prom")
    prom = promharness.PrometheusServer(
        workdir,
        [f"127.0.0.1:{port}" for port in (serving_port, operator_port, vllm_port)],
        labels={"namespace": "ml", "model": "fake"},
        rule_files=RULE_FILES,
    )
    try:
        prom.start()
        prom.wait_targets_up(timeout=60)
        yield prom
    finally:
        prom.stop()
        for exporter in exporters:
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
    assert boards == {
        "mmo / Overview",
        "mmo / Engine",
        "mmo / Experts",
        "mmo / Isolation",
        "mmo / Operator",
    }
    expected = sum(
        len(t)
        for p in sorted((REPO / "charts/mmo/dashboards").glob("*.json"))
        for t in (panel.get("targets", []) for panel in json.loads(p.read_text())["panels"])
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


def test_every_vllm_family_is_scraped_under_its_ray_name(
    vllm_exporter: ModuleType, fake_prometheus: Any
) -> None:
    names = vllm_exporter.exported_series_names()
    missing = [name for name in names if not fake_prometheus.query(f"{name}{{model='fake'}}")]
    assert missing == []
    metadata = json.loads(fake_prometheus._get("/api/v1/metadata") or b"{}")["data"]
    kinds = {name: entries[0]["type"] for name, entries in metadata.items()}
    for family, (kind, _, _) in vllm_exporter.VLLM_FAMILIES.items():
        assert kinds.get(vllm_exporter.ray_name(family)) == kind, family
    (series,) = fake_prometheus.query(
        "ray_vllm_kv_cache_usage_perc{ReplicaId='replica-a'}"
    )  # vLLM's labels and the wrapper's ReplicaId survive the scrape
    assert {"model_name", "engine", "ReplicaId", "namespace", "model"} <= set(series["metric"])


def test_engine_alerts_evaluate_on_the_scraped_names(
    promharness: ModuleType, fake_prometheus: Any
) -> None:
    """The exporter's first rank is full with requests waiting and its first tokens are
    slower than the 0.5 s target the fake operator reports: both alerts become pending
    (they fire after 10 minutes, longer than a test)."""
    queries = [
        promharness.PanelQuery("rules", alert, "A", f'ALERTS{{alertname="{alert}", model="fake"}}')
        for alert in ENGINE_ALERTS
    ]
    assert promharness.empty_queries(fake_prometheus, queries, {}, timeout=90) == []


def test_a_rank_that_never_preempted_shows_zero_preemptions(
    promharness: ModuleType, fake_prometheus: Any
) -> None:
    """Ray exports a counter only after its first increment: the fake's second rank has no
    preemption series, and the Engine dashboard still shows that rank, at 0."""
    (panel,) = [q for q in promharness.panel_queries() if q.panel.startswith("Preemptions")]
    expr = promharness.substitute(panel.expr, {"namespace": ".*", "model": ".*"})
    assert fake_prometheus.query("ray_vllm_num_preemptions_total{ReplicaId='replica-b'}") == []
    deadline = time.monotonic() + 60
    by_rank: dict[str, float] = {}
    while time.monotonic() < deadline and sorted(by_rank) != ["replica-a", "replica-b"]:
        time.sleep(1)
        by_rank = {
            s["metric"]["ReplicaId"]: float(s["value"][1]) for s in fake_prometheus.query(expr)
        }
    assert by_rank["replica-b"] == 0
    assert by_rank["replica-a"] > 0
