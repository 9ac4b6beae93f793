"""The plan in force: read it (``mmo plan --current`` and the operator), check its shape,
re-plan.

The file is the ``placement`` object that ``mmo plan -o json`` prints (or that whole
output), or the placement ConfigMap as ``kubectl get configmap NAME-placement -o json``
prints it (its ``data["placement.json"]`` holds the same JSON). Re-planning calls the
planner as the operator does (``plan_for_model`` with ``current``: low churn for
``balanced``), and once more from scratch (``low_churn=False``, GPUs renumbered to keep
what they can) for the figure low churn is weighed against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mmo_operator.api.problems import format_loc
from mmo_operator.planning import plan_for_model
from mmo_operator.planning.loads import read_loads
from mmo_operator.planning.placement import score_plan, slots_needed
from mmo_serving.config import PlacementPlan

if TYPE_CHECKING:
    from mmo_operator.api.v1alpha1 import Architecture, MultimodalModel

    from .capacity import CapacityReport

PLACEMENT_KEY = "placement.json"  # the key of the placement ConfigMap's data

CURRENT_FORMATS = (
    'the "placement" object of `mmo plan -o json` (or that whole output), or the placement '
    "ConfigMap as `kubectl get configmap NAME-placement -o json` prints it"
)


def read_current_plan(path: str | Path) -> PlacementPlan:
    """The plan in ``path``; ValueError naming the file, what is wrong and what is valid."""
    name = _name(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{name}: cannot read it ({err})") from None
    data = _plan_data(_json(text, name), name)
    try:
        return PlacementPlan.model_validate(data)
    except ValidationError as err:
        wrong = "; ".join(
            f"{format_loc(e['loc']) or 'plan'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()[:3]
        )
        raise ValueError(
            f"{name} is not a placement plan ({wrong}); expected {CURRENT_FORMATS}"
        ) from None


def _name(path: str | Path) -> str:
    return f"current plan {str(path)!r}"


def _json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{name} is not JSON: {err.msg} at line {err.lineno} column {err.colno}; "
            f"expected {CURRENT_FORMATS}"
        ) from None


def _plan_data(data: Any, name: str) -> Any:
    """The plan's JSON inside a ConfigMap or a whole `mmo plan -o json` output."""
    if not isinstance(data, dict):
        return data
    if data.get("kind") == "ConfigMap":
        values = data.get("data") or {}
        if PLACEMENT_KEY not in values:
            keys = ", ".join(sorted(values)) or "none"
            raise ValueError(
                f'{name} is a ConfigMap without data["{PLACEMENT_KEY}"] (its keys: {keys}); '
                f"expected the placement ConfigMap NAME-placement that the operator writes"
            )
        return _json(str(values[PLACEMENT_KEY]), f'{name} data["{PLACEMENT_KEY}"]')
    if "placement" in data and "layers" not in data:
        if data["placement"] is None:
            raise ValueError(
                f"{name} is `mmo plan -o json` output without a placement (the model did "
                f"not fit); expected {CURRENT_FORMATS}"
            )
        return data["placement"]
    return data


def plan_in_force(configmap: dict[str, Any] | None, fresh: PlacementPlan) -> PlacementPlan:
    """The plan the placement ``configmap`` holds (a rebalance may have changed it) while it
    still has the shape of ``fresh``, the plan of the spec; otherwise ``fresh``."""
    if not configmap:
        return fresh
    try:
        plan = PlacementPlan.model_validate(_plan_data(configmap, "placement ConfigMap"))
    except ValueError:  # not JSON, not a plan, no placement key: the spec's plan wins
        return fresh
    return plan if same_shape(plan, fresh) else fresh


def same_shape(plan: PlacementPlan, fresh: PlacementPlan) -> bool:
    """``plan`` still fits the spec that ``fresh`` was planned from."""
    return (
        plan.strategy == fresh.strategy
        and plan.num_gpus == fresh.num_gpus
        and plan.num_nodes == fresh.num_nodes
        and plan.slots_per_gpu == fresh.slots_per_gpu
        and plan.num_experts == fresh.num_experts
        and plan.redundant_experts == fresh.redundant_experts
        and len(plan.layers) == len(fresh.layers)
    )


def check_shape(
    current: PlacementPlan,
    *,
    num_experts: int,
    redundant_experts: int,
    num_gpus: int,
    strategy: str,
    num_layers: int,
    name: str = "current plan",
) -> None:
    """ValueError listing every way ``current`` differs from the plan of the spec."""
    slots = slots_needed(num_experts, redundant_experts, num_gpus, strategy)
    fields = (
        ("experts per layer", current.num_experts, num_experts, "numExperts"),
        ("GPUs", current.num_gpus, num_gpus, "gpusPerNode x nodesPerReplica"),
        (
            f"expert slots per GPU (redundantExperts {current.redundant_experts})",
            current.slots_per_gpu,
            slots,
            f"{num_experts} experts + {redundant_experts} redundant over {num_gpus} GPUs",
        ),
        ("MoE layers", len(current.layers), num_layers, "numMoeLayers"),
    )
    wrong = [
        f"{have} {what} where the spec has {want} ({source})"
        for what, have, want, source in fields
        if have != want
    ]
    if wrong:
        raise ValueError(
            f"{name} does not match the spec: it has {'; '.join(wrong)}. Moves are counted "
            "between plans of the same shape: give the plan `mmo plan -o json` printed for "
            "this spec or the model's placement ConfigMap, or plan without --current"
        )


@dataclass(frozen=True)
class Replan:
    """A re-plan from the plan in force, with the from-scratch plan for comparison."""

    plan: PlacementPlan  # low churn for balanced; the strategy's plan otherwise
    scratch: PlacementPlan
    balancedness_before: float  # the current plan on the same loads

    def to_dict(self) -> dict[str, Any]:
        def moves(plan: PlacementPlan) -> dict[str, Any]:
            per_layer = [lp.moved for lp in plan.layers]
            return {
                "balancedness": plan.balancedness,
                "moved": sum(per_layer),
                "movedPerLayer": per_layer,
            }

        return {
            "balancednessBefore": self.balancedness_before,
            **moves(self.plan),
            "fromScratch": moves(self.scratch),
        }


def replan(
    model: MultimodalModel,
    arch: Architecture,
    capacity: CapacityReport,
    current: PlacementPlan | str | Path,
    *,
    loads_path: str | Path | None = None,
    max_moves: int | None = None,
) -> Replan:
    """Re-plan ``model`` from ``current`` (a plan or its file) on the loads of
    ``loads_path`` (uniform without one)."""
    name = "current plan"
    if not isinstance(current, PlacementPlan):
        name, current = _name(current), read_current_plan(current)
    spec = model.spec
    check_shape(
        current,
        num_experts=arch.num_experts,
        redundant_experts=spec.experts.redundant_experts,
        num_gpus=spec.total_gpus,
        strategy=spec.experts.placement,
        num_layers=arch.moe_layers,
        name=name,
    )
    loads = read_loads(loads_path, num_layers=arch.moe_layers, num_experts=arch.num_experts)
    plan = plan_for_model(model, arch, capacity, loads=loads, current=current, max_moves=max_moves)
    scratch = plan_for_model(model, arch, capacity, loads=loads, current=current, low_churn=False)
    return Replan(plan, scratch, score_plan(current, loads).balancedness)
