"""`helm lint --strict` (Helm v4 through helm-python-sdk, offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

CHART = Path(__file__).resolve().parents[2] / "charts" / "mmo"


@pytest.mark.parametrize("variant", ["defaults", "all_on", "user_tls", "namespaced"])
def test_strict_lint_is_clean(
    chart_with_dependency_stub: Path,
    variant: str,
    values_all_on: dict[str, Any],
    values_user_tls: dict[str, Any],
    values_namespaced: dict[str, Any],
) -> None:
    values = {
        "defaults": None,
        "all_on": values_all_on,
        "user_tls": values_user_tls,
        "namespaced": values_namespaced,
    }[variant]
    report = helm.lint(
        chart_with_dependency_stub,
        values,
        strict=True,
        namespace="mmo-system",
        kube_version="v1.30.0",
    )
    assert report["errors"] == [] and report["messages"] == [], report


def test_only_the_unvendored_dependency_is_missing_from_the_source_tree() -> None:
    """The KubeRay archive is not vendored (no network here): that is all lint may report."""
    report = helm.lint(CHART, strict=True)
    assert [m["error"] for m in report["messages"]] == [
        "chart directory is missing these dependencies: kuberay-operator"
    ]
    (dep,) = helm.dependency_list(CHART)
    assert (dep["name"], dep["status"]) == ("kuberay-operator", "missing")


def test_kuberay_dependency_is_optional_and_off_by_default() -> None:
    with helm.Chart.load(CHART) as chart:
        (dep,) = chart.metadata["dependencies"]
        assert dep["condition"] == "kuberay-operator.enabled"
        assert chart.values["kuberay-operator"]["enabled"] is False
        # Rendering does not need the archive when the dependency is off.
        assert chart.render(None, name="mmo", namespace="mmo-system")
