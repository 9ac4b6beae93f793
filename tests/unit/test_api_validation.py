"""`mmo validate`: samples pass, every invalid example fails with its message."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from mmo_operator.api.crd import build_crd
from mmo_operator.api.parse import read_document
from mmo_operator.api.problems import InvalidResource
from mmo_operator.api.rules import RULES
from mmo_operator.cli import main
from mmo_operator.validation import validate, validate_file

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    return [
        line.split("# expect:", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]


def test_there_are_samples_and_invalid_cases() -> None:
    names = {p.name for p in SAMPLES}
    assert {"private-vqa.yaml", "hybrid-vqa.yaml", "federated-vqa.yaml"} <= names
    assert "deepseek-v3-int4.yaml" in names
    assert len(INVALID) >= 15
    assert all(expectations(p) for p in INVALID), "every invalid case states its error"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_is_valid(path: Path) -> None:
    validated = validate_file(path)
    assert validated.capacity.fits


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_case_fails_with_its_message(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    for expected in expectations(path):
        assert expected in err, f"{expected!r} not in:\n{err}"


def test_validate_all_samples_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", *map(str, SAMPLES)]) == 0
    assert capsys.readouterr().out.count(": valid (") == len(SAMPLES)


def test_validate_json_output_lists_problems(capsys: pytest.CaptureFixture[str]) -> None:
    bad = Path(__file__).parent / "invalid" / "replicas.yaml"
    assert main(["validate", "-o", "json", str(bad)]) == 1
    out = yaml.safe_load(capsys.readouterr().out)
    assert out[0]["valid"] is False
    assert out[0]["problems"][0]["path"] == "spec.autoscaling.maxReplicas"


def test_missing_file_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def _doc() -> dict:
    return read_document((ROOT / "manifests/samples/deepseek-v3-int4.yaml").read_text())


def test_several_problems_reported_at_once() -> None:
    doc = _doc()
    doc["spec"]["autoscaling"] = {"minReplicas": 3, "maxReplicas": 1}
    doc["spec"]["model"]["architecture"]["activeParams"] = 700_000_000_000
    with pytest.raises(InvalidResource) as e:
        validate(doc)
    paths = {p.path for p in e.value.problems}
    assert paths == {"spec.autoscaling.maxReplicas", "spec.model.architecture.activeParams"}


def test_defaults_are_applied() -> None:
    doc = {
        "apiVersion": "serving.mmo.dev/v1alpha1",
        "kind": "MultimodalModel",
        "metadata": {"name": "m"},
        "spec": {"model": {"source": "builtin://shapes-moe"}},
    }
    m = validate(doc).model
    assert m.spec.resources.gpus_per_node == 8
    assert m.spec.isolation.mode == "private"
    assert m.spec.experts.placement == "balanced"
    assert m.spec.model.modalities == ["text", "image"]


def test_unknown_builtin_names_the_available_ones() -> None:
    doc = copy.deepcopy(_doc())
    doc["spec"]["model"] = {"source": "builtin://nope"}
    doc["spec"].pop("serving", None)  # engine vllm and its settings belong to checkpoints
    with pytest.raises(InvalidResource) as e:
        validate(doc)
    (problem,) = e.value.problems
    assert problem.path == "spec.model.source"
    assert "unknown builtin model 'nope'; available: shapes-moe" in problem.message


def test_builtin_balanced_divisibility_uses_the_package_architecture() -> None:
    doc = {
        "apiVersion": "serving.mmo.dev/v1alpha1",
        "kind": "MultimodalModel",
        "metadata": {"name": "m"},
        "spec": {"model": {"source": "builtin://shapes-moe"}, "experts": {"redundantExperts": 3}},
    }
    with pytest.raises(InvalidResource) as e:
        validate(doc)
    assert e.value.problems[0].path == "spec.experts.redundantExperts"
    assert "numExperts (8 for builtin://shapes-moe)" in e.value.problems[0].message
    assert e.value.problems[0].message.endswith(
        ": 8 + 3 = 11 is not a multiple of 8 GPUs (8 x 1); use redundantExperts 0 or 8"
    )


def test_divisibility_figures_are_python_only() -> None:
    """The CEL rule keeps its static message; validation adds the numbers and the fix."""
    doc = _doc()
    doc["spec"]["resources"]["nodesPerReplica"] = 6
    with pytest.raises(InvalidResource) as e:
        validate(doc)
    (rule,) = [r for r in RULES if r.path == "spec.experts.redundantExperts"]
    (problem,) = [p for p in e.value.problems if p.path == rule.path]
    assert problem.message == (
        f"{rule.message}: 256 + 0 = 256 is not a multiple of 48 GPUs (8 x 6); "
        "use redundantExperts 32"
    )
    assert not any(ch.isdigit() for ch in rule.message)
    crd_messages = json.dumps(build_crd())
    assert rule.message in crd_messages and "256 + 0" not in crd_messages


def test_nested_unknown_field_in_list_item() -> None:
    doc = _doc()
    doc["spec"]["isolation"]["allowedClients"] = [{"podSelector": {"matchLabel": {"a": "b"}}}]
    with pytest.raises(InvalidResource) as e:
        validate(doc)
    (problem,) = e.value.problems
    assert problem.path == "spec.isolation.allowedClients[0].podSelector.matchLabel"
    assert "allowed fields: matchExpressions, matchLabels" in problem.message
