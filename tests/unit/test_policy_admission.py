"""Isolation admission: each violation is refused with a message naming its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmo_operator.api.validation import parse_model
from mmo_operator.policy.admission import (
    check_isolation,
    dp_epsilon,
    is_in_cluster_host,
    split_host_port,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests/samples").glob("*.yaml"))


def sample(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "manifests/samples" / name).read_text())
    return doc


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in check_isolation(parse_model(doc))]


def patched(name: str, path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(sample(name))
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return doc


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_pass(path: Path) -> None:
    assert check_isolation(parse_model(yaml.safe_load(path.read_text()))) == []


HY = "hybrid-vqa.yaml"
FED = "federated-vqa.yaml"
PRIV = "private-vqa.yaml"
S3 = {"endpoint": "http://minio.store.svc.cluster.local:9000", "credentialsSecret": "s3-creds"}

# (sample, dotted path to set, value, expected problem path, words the message must hold)
CASES: list[tuple[str, str, Any, str, list[str]]] = [
    (HY, "spec.model.source", "hf://org/model", "spec.model.source", ["hybrid", "pvc://"]),
    (
        HY, "spec.isolation.hybrid.endpoint", "https://user:sk-123@llm.example.com/v1",
        "spec.isolation.hybrid.endpoint", ["user:password@", "credentialsSecret"],
    ),
    (
        HY, "spec.isolation.hybrid.endpoint", "https://llm.example.com/v1?api_key=sk-1",
        "spec.isolation.hybrid.endpoint", ["'api_key' query parameter", "never inline"],
    ),
    (
        HY, "spec.isolation.hybrid.cidrs", ["0.0.0.0/0"],
        "spec.isolation.hybrid.cidrs[0]", ["too wide", "/16"],
    ),
    (
        HY, "spec.isolation.hybrid.cidrs", ["203.0.113.0/24", "2001::/16"],
        "spec.isolation.hybrid.cidrs[1]", ["too wide", "IPv6", "/32"],
    ),
    (
        HY, "spec.isolation.hybrid.cidrs", ["203.0.113.7/24"],
        "spec.isolation.hybrid.cidrs[0]", ["host bits", "203.0.113.0/24"],
    ),
    (
        HY, "spec.isolation.hybrid.endpoint", "https://198.51.100.10/v1",
        "spec.isolation.hybrid.cidrs", ["198.51.100.10", "in none of"],
    ),
    (
        HY, "spec.isolation.hybrid.offloadDataClasses", [],
        "spec.isolation.hybrid.offloadDataClasses", ["empty", "mode private"],
    ),
    (
        HY, "spec.isolation.hybrid.offloadDataClasses", ["public", "public"],
        "spec.isolation.hybrid.offloadDataClasses", ["twice"],
    ),
    (
        FED, "spec.isolation.federated.aggregator", "superlink.fl.svc",
        "spec.isolation.federated.aggregator", ["host:port", "port is required"],
    ),
    (
        FED, "spec.isolation.federated.aggregator", "10.0.0.5:9092",
        "spec.isolation.federated.cidrs", ["10.0.0.5", "in none of"],
    ),
    (
        FED, "spec.isolation.federated.minClients", 2,
        "spec.isolation.federated.minClients", ["is 2", "at least 3", "recover"],
    ),
    (
        FED, "spec.isolation.federated.differentialPrivacy.noiseMultiplier", 0.1,
        "spec.isolation.federated.differentialPrivacy.noiseMultiplier",
        ["is 0.1", "0.5 to 10", "epsilon"],
    ),
    (
        FED, "spec.isolation.federated.differentialPrivacy.noiseMultiplier", 0,
        "spec.isolation.federated.differentialPrivacy.noiseMultiplier", ["is 0", "epsilon inf"],
    ),
    (
        FED, "spec.isolation.federated.differentialPrivacy.noiseMultiplier", 20,
        "spec.isolation.federated.differentialPrivacy.noiseMultiplier", ["bury"],
    ),
    (
        FED, "spec.isolation.federated.differentialPrivacy.clipNorm", 50,
        "spec.isolation.federated.differentialPrivacy.clipNorm", ["is 50", "0.001 to 10"],
    ),
    (
        FED, "spec.isolation.federated.cidrs", ["10.0.0.0/4"],
        "spec.isolation.federated.cidrs[0]", ["host bits"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,path,value,field,words", CASES, ids=[c[1] + "=" + str(c[2]) for c in CASES]
)
def test_violation_names_field(
    name: str, path: str, value: Any, field: str, words: list[str]
) -> None:
    found = problems(patched(name, path, value))
    assert [p for p, _ in found] == [field], found
    for w in words:
        assert w in found[0][1], (w, found[0][1])


def _with_s3(name: str, endpoint: str) -> dict[str, Any]:
    doc = patched(name, "spec.model.source", "s3://weights/shapes")
    doc["spec"]["model"]["s3"] = {**S3, "endpoint": endpoint}
    doc["spec"]["model"]["architecture"] = {
        "totalParams": 1_000_000, "activeParams": 500_000, "numLayers": 2,
        "numExperts": 8, "expertsPerToken": 2,
    }  # fmt: skip
    return doc


@pytest.mark.parametrize("name", [PRIV, HY, FED])
def test_s3_source_must_be_in_cluster_in_every_mode(name: str) -> None:
    assert problems(_with_s3(name, "http://minio.store.svc.cluster.local:9000")) == []
    assert problems(_with_s3(name, "http://10.20.0.4:9000")) == []
    found = problems(_with_s3(name, "https://s3.amazonaws.com"))
    assert [p for p, _ in found] == ["spec.model.s3.endpoint"]
    assert "'s3.amazonaws.com' is outside the cluster" in found[0][1]
    found = problems(_with_s3(name, "http://key:secret@minio:9000"))
    assert [p for p, _ in found] == ["spec.model.s3.endpoint"]
    assert "credentialsSecret" in found[0][1]


def test_several_problems_are_all_reported() -> None:
    doc = patched(FED, "spec.isolation.federated.minClients", 1)
    doc["spec"]["isolation"]["federated"]["differentialPrivacy"] = {
        "clipNorm": 0.0001,
        "noiseMultiplier": 0.2,
    }
    assert sorted(p for p, _ in problems(doc)) == [
        "spec.isolation.federated.differentialPrivacy.clipNorm",
        "spec.isolation.federated.differentialPrivacy.noiseMultiplier",
        "spec.isolation.federated.minClients",
    ]


def test_mmo_validate_prints_isolation_problems(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from mmo_operator.cli import main

    bad = tmp_path / "bad.yaml"
    doc = sample("deepseek-v3-int4.yaml")  # pvc:// source: needs no builtin model
    doc["spec"]["isolation"] = sample(FED)["spec"]["isolation"]
    doc["spec"]["isolation"]["federated"]["minClients"] = 2
    bad.write_text(yaml.safe_dump(doc))
    rc = main(["validate", str(bad)])
    out = capsys.readouterr()
    assert rc == 1
    assert "spec.isolation.federated.minClients: is 2; at least 3" in out.out + out.err


def test_dp_epsilon_bound_behind_the_noise_floor() -> None:
    # the documented reason for noiseMultiplier >= 0.5: one round below it costs eps > 10
    assert dp_epsilon(0.49, 1) > 10 > dp_epsilon(0.6, 1)
    assert dp_epsilon(1.1, 20) > dp_epsilon(1.1, 10) > dp_epsilon(2.0, 10)
    assert dp_epsilon(0, 1) == float("inf")


def test_helpers() -> None:
    assert split_host_port("superlink.fl.svc:9092") == ("superlink.fl.svc", 9092)
    assert split_host_port("[2001:db8::1]:9092") == ("2001:db8::1", 9092)
    assert split_host_port("host:0") is None and split_host_port("host") is None
    assert is_in_cluster_host("minio") and is_in_cluster_host("minio.store")
    assert is_in_cluster_host("minio.store.svc") and is_in_cluster_host("192.168.1.2")
    assert not is_in_cluster_host("s3.eu-west-1.amazonaws.com")
    assert not is_in_cluster_host("8.8.8.8")
