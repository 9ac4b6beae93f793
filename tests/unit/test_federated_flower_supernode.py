"""The site's Flower SuperNode Deployment (federated mode only)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmo_operator.api.parse import parse_model
from mmo_operator.builders.supernode import (
    DEFAULT_TRUST_SECRET,
    PARTITION_ANNOTATION,
    TRUST_DIR,
    TRUST_SECRET_ANNOTATION,
    TRUSTED_ENTITIES_KEY,
    build_supernode,
)

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def _doc(name: str) -> dict[str, Any]:
    return yaml.safe_load((SAMPLES / name).read_text())


def test_none_outside_federated_mode() -> None:
    for sample in ("private-vqa.yaml", "hybrid-vqa.yaml"):
        assert build_supernode(parse_model(_doc(sample))) is None


def test_supernode_deployment() -> None:
    model = parse_model(_doc("federated-vqa.yaml"))
    dep = build_supernode(model, uid="u-1")
    assert dep is not None
    labels = dep["metadata"]["labels"]
    assert labels["serving.mmo.dev/model"] == "federated-vqa"
    assert labels["app.kubernetes.io/managed-by"] == "mmo-operator"
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    pod = dep["spec"]["template"]
    # the model label puts the pod under the model's NetworkPolicies (egress: aggregator)
    assert pod["metadata"]["labels"]["serving.mmo.dev/model"] == "federated-vqa"
    assert dep["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    c = pod["spec"]["containers"][0]
    args = c["args"]
    assert args[args.index("--superlink") + 1] == model.spec.isolation.federated.aggregator
    assert "--insecure" not in args
    node = args[args.index("--node-config") + 1]
    assert "clip-norm=1.0" in node and "noise-multiplier=1.1" in node
    assert "partition-id=0 num-partitions=1" in node
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["HF_HUB_OFFLINE"] == "1"
    assert len(env) == len(c["env"])  # no duplicates


def test_validates_against_the_kubernetes_schema() -> None:
    import kubernetes_validate as kv

    dep = build_supernode(parse_model(_doc("federated-vqa.yaml")))
    kv.validate(dep, kv.latest_version(), strict=True)


def test_partition_annotation() -> None:
    doc = _doc("federated-vqa.yaml")
    doc["metadata"]["annotations"] = {PARTITION_ANNOTATION: "2/3"}
    dep = build_supernode(parse_model(doc))
    assert dep is not None
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "partition-id=2 num-partitions=3" in args[args.index("--node-config") + 1]
    bad = copy.deepcopy(doc)
    bad["metadata"]["annotations"] = {PARTITION_ANNOTATION: "3/3"}
    with pytest.raises(ValueError, match="expected 'I/N' with 0 <= I < N"):
        build_supernode(parse_model(bad))


def _node_config(doc: dict[str, Any]) -> str:
    dep = build_supernode(parse_model(doc))
    assert dep is not None
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return str(args[args.index("--node-config") + 1])


def test_secure_aggregation_makes_the_site_vouch_for_its_sums() -> None:
    assert "secure-shares" not in _node_config(_doc("federated-vqa.yaml"))
    doc = _doc("federated-vqa.yaml")
    doc["spec"]["isolation"]["federated"].update(secureAggregation=True, minClients=5)
    assert "secure-shares=5" in _node_config(doc)


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    dep = build_supernode(parse_model(doc))
    assert dep is not None
    return dict(dep["spec"]["template"]["spec"])


def test_supernode_runs_only_bundles_signed_by_a_trusted_key() -> None:
    pod = _pod(_doc("federated-vqa.yaml"))
    c = pod["containers"][0]
    trust_file = c["args"][c["args"].index("--trusted-entities") + 1]
    assert trust_file == f"{TRUST_DIR}/{TRUSTED_ENTITIES_KEY}"
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == TRUST_DIR)
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    # the public trust file of the Secret, nothing else of it; a missing Secret stops the pod
    assert volume["secret"] == {
        "secretName": DEFAULT_TRUST_SECRET,
        "items": [{"key": TRUSTED_ENTITIES_KEY, "path": TRUSTED_ENTITIES_KEY}],
        "defaultMode": 0o444,
    }
    secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secrets == [DEFAULT_TRUST_SECRET]
    assert not any("valueFrom" in e for e in c["env"])


def test_trust_secret_annotation() -> None:
    doc = _doc("federated-vqa.yaml")
    doc["metadata"]["annotations"] = {TRUST_SECRET_ANNOTATION: "site-a.trust"}
    volumes = _pod(doc)["volumes"]
    assert [v["secret"]["secretName"] for v in volumes if "secret" in v] == ["site-a.trust"]
    doc["metadata"]["annotations"] = {TRUST_SECRET_ANNOTATION: "Site_A"}
    with pytest.raises(
        ValueError,
        match=r"federated-trust-secret'\] is 'Site_A'; expected the name of a Secret in the "
        r"model's namespace \(a DNS subdomain",
    ):
        build_supernode(parse_model(doc))
