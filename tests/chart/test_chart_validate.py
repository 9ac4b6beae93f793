"""Rendered objects are valid Kubernetes: core kinds with kubernetes-validate, monitoring kinds
against the prometheus-operator CRD schemas vendored in hack/schemas/."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

Obj = dict[str, Any]
K8S_VERSION = "1.30.0"
CRD_FILES = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}
# cert-manager kinds have no schema in hack/schemas/; their fields are checked in test_chart_render.
NO_SCHEMA = {"Certificate", "Issuer"}


def strip_k8s_extensions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: strip_k8s_extensions(v) for k, v in node.items() if not k.startswith("x-kubernetes-")
        }
    if isinstance(node, list):
        return [strip_k8s_extensions(v) for v in node]
    return node


def crd_validator(schemas: Path, kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((schemas / CRD_FILES[kind]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strip_k8s_extensions(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def variants(values_all_on: Obj, values_user_tls: Obj, values_namespaced: Obj) -> list[Obj | None]:
    return [None, values_all_on, values_user_tls, values_namespaced]


def test_core_objects_pass_kubernetes_validate(
    render: Any, values_all_on: Obj, values_user_tls: Obj, values_namespaced: Obj
) -> None:
    checked: set[str] = set()
    for values in variants(values_all_on, values_user_tls, values_namespaced):
        for doc in render(values):
            if doc["kind"] in CRD_FILES or doc["kind"] in NO_SCHEMA:
                continue
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            checked.add(doc["kind"])
    assert checked >= {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "ValidatingWebhookConfiguration",
        "ConfigMap",
        "NetworkPolicy",
    }


def test_kubernetes_validate_catches_a_broken_object(render: Any) -> None:
    """The validator is strict enough to fail on a misspelt field (so the test above can fail)."""
    (dep,) = [d for d in render() if d["kind"] == "Deployment"]
    dep["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_monitoring_objects_match_their_crd_schema(
    render: Any, values_all_on: Obj, crd_schemas: Path, kind: str
) -> None:
    validator = crd_validator(crd_schemas, kind)
    (doc,) = [d for d in render(values_all_on) if d["kind"] == kind]
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    errors = sorted(validator.iter_errors(doc), key=str)
    assert errors == [], [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    # The schema is strict enough to fail: a wrong type in the spec is reported.
    broken = copy.deepcopy(doc)
    if kind == "ServiceMonitor":
        broken["spec"]["endpoints"] = [{"port": 8080}]  # a port *name* is a string
    else:
        broken["spec"]["groups"][0]["rules"] = "not-a-list"
    assert list(validator.iter_errors(broken)), f"{kind} schema accepted a broken object"
