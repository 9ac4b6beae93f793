"""Alert rules: `promtool check rules` and `promtool test rules` (Debian package `prometheus`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RULES = REPO / "charts" / "mmo" / "rules"
RULE_FILES = sorted(RULES.glob("*.yaml"))
TEST_FILES = sorted(HERE.glob("rules_test_*.yaml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install the Debian package `prometheus`")
    return exe


def run(promtool: str, *args: str, cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def alerts_in(paths: list[Path]) -> set[str]:
    return {
        rule["alert"]
        for path in paths
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_the_five_required_alerts_exist() -> None:
    assert alerts_in(RULE_FILES) >= {
        "MmoLatencyP95AboveTarget",
        "MmoExpertImbalance",
        "MmoPolicyRefusalBurst",
        "MmoReconcileErrors",
        "MmoServingDown",
    }


@pytest.mark.parametrize("path", RULE_FILES, ids=[p.name for p in RULE_FILES])
def test_promtool_check_rules(promtool: str, path: Path) -> None:
    proc = run(promtool, "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_check_rules_on_the_rendered_prometheus_rule(
    promtool: str, tmp_path: Path
) -> None:
    """What the chart installs (with per-model targets) is valid Prometheus rule syntax."""
    values = {"prometheusRule": {"enabled": True, "latencyTargetsMs": {"vqa": 750, "chat-x": 1200}}}
    with helm.Chart.load(REPO / "charts" / "mmo") as chart:
        out = chart.render(values, name="mmo", namespace="mmo-system")
    (rule,) = [
        d
        for name, text in out.items()
        if not name.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d and d.get("kind") == "PrometheusRule"
    ]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = run(promtool, "check", "rules", str(rendered))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=[p.name for p in TEST_FILES])
def test_promtool_unit_tests_pass(promtool: str, path: Path) -> None:
    proc = run(promtool, "test", "rules", path.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = alerts_in(RULE_FILES)
    assert alerts - firing == set(), "alerts never shown to fire"
    assert alerts - quiet == set(), "alerts never shown to stay quiet"


def test_unit_tests_notice_a_changed_threshold(promtool: str, tmp_path: Path) -> None:
    """The promtool tests can fail: raise the imbalance threshold and they must."""
    rules = tmp_path / "charts" / "mmo" / "rules"
    tests = tmp_path / "tests" / "observability"
    shutil.copytree(RULES, rules)
    tests.mkdir(parents=True)
    shutil.copy(HERE / "rules_test_serving.yaml", tests)
    thresholds = rules / "mmo-thresholds.yaml"
    text = thresholds.read_text()
    assert "vector(1.5)" in text
    thresholds.write_text(text.replace("vector(1.5)", "vector(1.9)"))
    proc = run(promtool, "test", "rules", "rules_test_serving.yaml", cwd=tests)
    assert proc.returncode != 0
    assert "MmoExpertImbalance" in proc.stdout + proc.stderr


def _groups(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["groups"])


def test_override_thresholds_match_what_the_chart_renders() -> None:
    """rules_thresholds_override.yaml is the chart's output for latencyTargetsMs {fast: 300}."""
    with helm.Chart.load(REPO / "charts" / "mmo") as chart:
        out = chart.render(
            {"prometheusRule": {"enabled": True, "latencyTargetsMs": {"fast": 300}}},
            name="mmo",
            namespace="mmo-system",
        )
    (rule,) = [
        d
        for name, text in out.items()
        if not name.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d and d.get("kind") == "PrometheusRule"
    ]
    rendered = [g for g in rule["spec"]["groups"] if g["name"] == "mmo-thresholds"]
    assert rendered == _groups(HERE / "rules_thresholds_override.yaml")
