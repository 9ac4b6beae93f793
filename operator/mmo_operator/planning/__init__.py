"""Planning (pure): capacity, then expert placement."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmo_operator.api.v1alpha1 import Architecture, MultimodalModel
    from mmo_serving.config import PlacementPlan

    from .capacity import CapacityReport


def plan_for_model(
    model: MultimodalModel,
    arch: Architecture,
    capacity: CapacityReport,
    *,
    loads_path: str | Path | None = None,
    loads: Any = None,
    current: PlacementPlan | None = None,
    max_moves: int | None = None,
    low_churn: bool = True,
) -> PlacementPlan:
    """The placement plan of a model that fits: uniform load unless loads are given.

    With ``current``, moves are counted against it and a balanced plan is re-planned
    with low churn (``max_moves`` per layer at most; ``low_churn=False``: from scratch).
    """
    from .loads import read_loads
    from .placement import plan_placement

    spec = model.spec
    matrix = read_loads(
        loads if loads is not None else loads_path,
        num_layers=arch.moe_layers,
        num_experts=arch.num_experts,
    )
    return plan_placement(
        matrix,
        num_gpus=spec.total_gpus,
        num_nodes=spec.resources.nodes_per_replica,
        slots_per_gpu=capacity.max_slots_per_gpu,
        redundant_experts=spec.experts.redundant_experts,
        strategy=spec.experts.placement,
        current=current,
        max_moves=max_moves,
        low_churn=low_churn,
    )
