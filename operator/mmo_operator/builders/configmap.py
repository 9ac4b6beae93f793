"""The placement ConfigMap ``NAME-placement``: the plan as ``mmo plan -o json`` prints it."""

from __future__ import annotations

import json

from mmo_operator.api.v1alpha1 import MultimodalModel
from mmo_operator.planning.current import PLACEMENT_KEY
from mmo_serving.config import PlacementPlan

from .common import Obj, metadata, placement_configmap_name

__all__ = ["PLACEMENT_KEY", "build_placement_configmap"]


def build_placement_configmap(
    model: MultimodalModel, plan: PlacementPlan, uid: str | None = None
) -> Obj:
    plan_json = json.dumps(plan.model_dump(mode="json", by_alias=True), separators=(",", ":"))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(model, placement_configmap_name(model), uid),
        "data": {PLACEMENT_KEY: plan_json + "\n"},
    }
