"""`helm lint --strict` (Helm v4 through helm-python-sdk, offline) on the chart as cloned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "mmo"


@pytest.mark.parametrize("variant", ["defaults", "all_on", "user_tls", "namespaced"])
def test_strict_lint_reports_nothing(
    variant: str,
    values_all_on: dict[str, Any],
    values_user_tls: dict[str, Any],
    values_namespaced: dict[str, Any],
) -> None:
    """No error, warning or info line: the chart installs from a clone as it is."""
    values = {
        "defaults": None,
        "all_on": values_all_on,
        "user_tls": values_user_tls,
        "namespaced": values_namespaced,
    }[variant]
    report = helm.lint(CHART, values, strict=True, namespace="mmo-system", kube_version="v1.30.0")
    assert report["total_charts_linted"] == 1, report
    assert report["errors"] == [], report
    assert report["messages"] == [], [f"{m['severity']} {m['error']}" for m in report["messages"]]


def test_the_chart_has_no_dependencies_to_fetch() -> None:
    """KubeRay is installed with its own chart: nothing here needs `helm dependency build`."""
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert "dependencies" not in meta
    assert helm.dependency_list(CHART) == []
    assert not (CHART / "charts").exists()
    assert not (CHART / "Chart.lock").exists()


def test_strict_lint_reports_a_broken_chart(tmp_path: Path) -> None:
    """The lint test can fail: a dependency that is not vendored is reported, strictly."""
    broken = tmp_path / "mmo"
    broken.mkdir()
    for item in CHART.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / "Chart.yaml").unlink()
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    meta["dependencies"] = [
        {"name": "kuberay-operator", "version": "1.7.0", "repository": "https://example.com/"}
    ]
    (broken / "Chart.yaml").write_text(yaml.safe_dump(meta))
    report = helm.lint(broken, strict=True)
    assert [m["error"] for m in report["messages"]] == [
        "chart directory is missing these dependencies: kuberay-operator"
    ]
