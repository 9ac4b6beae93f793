"""The CEL rules in the CRD agree with the Python checks of `mmo validate`.

Each document is defaulted the way the API server defaults it (from the CRD's schema),
then every x-kubernetes-validations rule is evaluated with a CEL interpreter at its
node and compared with the Python rule it mirrors.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from mmo_operator.api.crd import build_crd
from mmo_operator.api.parse import parse_model
from mmo_operator.api.rules import RULES

ROOT = Path(__file__).resolve().parents[2]
SPEC_SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    if isinstance(obj, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(obj[name], sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(x, schema["items"]) for x in obj]
    return obj


def _node(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def cel_verdicts(spec: dict[str, Any]) -> dict[str, bool]:
    env = celpy.Environment()
    spec = apply_defaults(copy.deepcopy(spec), SPEC_SCHEMA)
    out = {}
    for rule in RULES:
        node = _node(spec, rule.at)
        if node is None:  # the API server runs rules only on present nodes
            out[rule.cel] = True
            continue
        program = env.program(env.compile(rule.cel))
        out[rule.cel] = bool(program.evaluate({"self": celpy.json_to_cel(node)}))
    return out


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((ROOT / "manifests/samples").glob("*.yaml")) + sorted(
        (ROOT / "tests/unit/invalid").glob("*.yaml")
    ):
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "MultimodalModel":
            out.append((path.name, doc))
    base = yaml.safe_load((ROOT / "manifests/samples/hybrid-vqa.yaml").read_text())
    mutations = {
        "hybrid-to-private": {"isolation": {"mode": "private"}},
        "hybrid-to-federated": {"isolation": {"mode": "federated"}},
        "hf-in-hybrid": {"model": {"source": "hf://org/name"}},
        "https-in-hybrid": {"model": {"source": "https://example.com/w"}},
        "equal-replicas": {"autoscaling": {"minReplicas": 4, "maxReplicas": 4}},
    }
    for name, patch in mutations.items():
        doc = copy.deepcopy(base)
        for key, value in patch.items():
            doc["spec"].setdefault(key, {}).update(value)
        out.append((name, doc))
    return out


def _schema_valid_docs() -> list[tuple[str, dict[str, Any]]]:
    """Documents that pass the schema (cross-field rules run only on those)."""
    out = []
    for name, doc in _docs():
        try:
            parse_model(doc)
        except Exception:
            continue
        out.append((name, doc))
    return out


@pytest.mark.parametrize(
    ("name", "doc"), _schema_valid_docs(), ids=[n for n, _ in _schema_valid_docs()]
)
def test_cel_and_python_agree(name: str, doc: dict[str, Any]) -> None:
    model = parse_model(doc)
    python = {r.cel: r.holds(model.spec) for r in RULES}
    assert cel_verdicts(doc["spec"]) == python


def test_some_rules_fail_in_the_corpus() -> None:
    failing = set()
    for _, doc in _schema_valid_docs():
        failing |= {cel for cel, ok in cel_verdicts(doc["spec"]).items() if not ok}
    # every rule is exercised by at least one invalid example or mutation
    assert failing == {r.cel for r in RULES}
