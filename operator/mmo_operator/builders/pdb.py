"""PodDisruptionBudget ``NAME-workers`` for the GPU worker pods.

``minAvailable`` is the workers of ``minReplicas`` replicas: a drain may take GPU nodes
that autoscaling added above the floor, never the floor itself (with ``minReplicas: 0``
nothing is protected). KubeRay labels worker pods ``ray.io/node-type: worker``.
"""

from __future__ import annotations

from mmo_operator.api.v1alpha1 import MultimodalModel

from .common import MODEL_LABEL, Obj, metadata, pdb_name


def build_worker_pdb(model: MultimodalModel, uid: str | None = None) -> Obj:
    spec = model.spec
    floor = spec.autoscaling.min_replicas * spec.resources.nodes_per_replica
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(model, pdb_name(model), uid),
        "spec": {
            "minAvailable": floor,
            "selector": {"matchLabels": {MODEL_LABEL: model.name, "ray.io/node-type": "worker"}},
        },
    }
