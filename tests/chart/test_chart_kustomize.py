"""manifests/base (kustomize) is the chart's default install, object for object."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]


def normalise(obj: Obj) -> Obj:
    """Drop what differs by design: Helm's own labels."""
    obj = copy.deepcopy(obj)
    labels = obj.get("metadata", {}).get("labels", {})
    labels.pop("helm.sh/chart", None)
    labels.pop("app.kubernetes.io/managed-by", None)
    return obj


def key(obj: Obj) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


@pytest.fixture(scope="module")
def kustomized() -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found (it renders the kustomize base): see hack/ensure-tools.sh")
    proc = subprocess.run(
        [kubectl, "kustomize", str(REPO / "manifests" / "base")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_kustomize_base_equals_chart_defaults(kustomized: list[Obj], render: Any) -> None:
    chart_objects = render(None)
    crds = [
        d
        for path in sorted((REPO / "charts" / "mmo" / "crds").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    expected = {key(o): normalise(o) for o in [*chart_objects, *crds]}
    got = {key(o): normalise(o) for o in kustomized if o["kind"] != "Namespace"}
    assert sorted(got) == sorted(expected), (
        "objects differ: run `python hack/gen_kustomize_base.py`"
    )
    for k, obj in expected.items():
        assert got[k] == obj, f"{k} differs: run `python hack/gen_kustomize_base.py`"


def test_kustomize_base_creates_a_restricted_namespace(kustomized: list[Obj]) -> None:
    (ns,) = [d for d in kustomized if d["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == "mmo-system"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(
        d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize"
        for d in kustomized
        if d["kind"] not in ("Namespace", "CustomResourceDefinition")
    )
