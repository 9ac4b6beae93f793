"""The CRD is generated from the models; the checked-in copies must not drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mmo_operator.api.crd import build_crd, render_crd
from mmo_operator.api.rules import RULES
from mmo_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = [
    ROOT / "manifests/crds/serving.mmo.dev_multimodalmodels.yaml",
    ROOT / "charts/mmo/crds/serving.mmo.dev_multimodalmodels.yaml",
]


@pytest.mark.parametrize("path", CHECKED_IN, ids=lambda p: str(p.relative_to(ROOT)))
def test_checked_in_crd_matches_generated(path: Path) -> None:
    assert path.read_text() == render_crd(), f"{path} is stale: run `make crd`"


def test_mmo_crd_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == render_crd()


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict) and ("type" in node or "properties" in node):
        out.append((path, node))
        for name, child in node.get("properties", {}).items():
            out += _walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node, f"{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            assert banned not in node, f"{path} uses {banned}"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path} mixes properties/additional"


def test_crd_basics() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "multimodalmodels.serving.mmo.dev"
    assert crd["spec"]["names"]["shortNames"] == ["mmm"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Mode", "GPUs", "Balance", "Endpoint", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["model"]
    iso = spec["properties"]["isolation"]
    assert iso["default"] == {}
    assert iso["properties"]["mode"]["default"] == "private"
    assert "redactPII" in iso["properties"]["hybrid"]["properties"]


def test_every_rule_is_attached_as_cel() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    found = []
    for _, node in _walk(spec):
        found += [v["rule"] for v in node.get("x-kubernetes-validations", [])]
    assert sorted(found) == sorted(r.cel for r in RULES)


def test_crd_is_valid_yaml_for_kubernetes() -> None:
    import kubernetes_validate

    crd = yaml.safe_load(render_crd())
    kubernetes_validate.validate(crd, "1.31", strict=True)
