"""Names, labels, owner references and hashes shared by every child builder (pure)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mmo_operator.api.v1alpha1 import API_VERSION, KIND, MultimodalModel
from mmo_operator.objects import Obj

MANAGER = "mmo-operator"
MODEL_LABEL = "serving.mmo.dev/model"
ROLE_LABEL = "serving.mmo.dev/role"  # head | worker | supernode, on pod templates
HASH_ANNOTATION = "serving.mmo.dev/spec-hash"
CLUSTER_HASH_ANNOTATION = "serving.mmo.dev/cluster-hash"
UPGRADE_ANNOTATION = "serving.mmo.dev/upgrade-strategy"

# Ports: GCS, dashboard, client, Ray's Prometheus endpoint (the chart's NetworkPolicies
# and the dashboards use the same numbers).
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
METRICS_PORT = 8080


def rayservice_name(model: MultimodalModel) -> str:
    return model.name


def placement_configmap_name(model: MultimodalModel) -> str:
    return f"{model.name}-placement"


def pdb_name(model: MultimodalModel) -> str:
    return f"{model.name}-workers"


def podmonitor_name(model: MultimodalModel) -> str:
    return model.name


def serve_service_name(model: MultimodalModel) -> str:
    """The Service KubeRay creates in front of the Serve HTTP proxies of a RayService."""
    return f"{model.name}-serve-svc"


def endpoint(model: MultimodalModel) -> str:
    return f"http://{serve_service_name(model)}.{model.namespace}.svc:{model.spec.serving.port}"


def labels(model: MultimodalModel) -> dict[str, str]:
    """Labels of every object the operator creates for a model (selectors rely on them)."""
    return {
        "app.kubernetes.io/name": "mmo",
        "app.kubernetes.io/instance": model.name,
        "app.kubernetes.io/managed-by": MANAGER,
        MODEL_LABEL: model.name,
    }


def owner_reference(model: MultimodalModel, uid: str) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": model.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(model: MultimodalModel, name: str, uid: str | None) -> Obj:
    meta: Obj = {"name": name, "namespace": model.namespace, "labels": labels(model)}
    if uid:
        meta["ownerReferences"] = [owner_reference(model, uid)]
    return meta


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stamp(obj: Obj) -> Obj:
    """Record the hash of the desired object in an annotation (change detection)."""
    annotations = obj["metadata"].setdefault("annotations", {})
    annotations.pop(HASH_ANNOTATION, None)
    annotations[HASH_ANNOTATION] = digest(obj)
    return obj
