"""Pure decision of the operator's rebalance timer: apply a new plan or keep the current.

The timer reads the per-expert load the serving engine observed, calls
``should_rebalance`` and, when it returns a plan, pushes it to the running engine
(in-place update) and records the figures of the decision in ``status.placement``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from mmo_operator.planning.placement import plan_placement, score_plan
from mmo_serving.config import PlacementPlan


class RebalanceDecision(NamedTuple):
    """``plan`` is None when the current plan stays; ``reason`` says why, for events."""

    plan: PlacementPlan | None
    reason: str
    balancedness_before: float
    balancedness_after: float
    moved: int


def should_rebalance(
    current: PlacementPlan,
    observed_loads: Any,
    min_improvement: float,
    *,
    max_moves: int | None = None,
) -> RebalanceDecision:
    """Re-score ``current`` on the observed loads, re-plan with low churn, decide.

    ``min_improvement`` is the least drop in balancedness (max/mean GPU load of the
    worst layer, e.g. 0.05 for 1.30 -> 1.25) worth the moves. ``max_moves`` caps the
    experts moved per layer. Load-oblivious strategies and windows without traffic
    never rebalance.
    """
    if not (isinstance(min_improvement, (int, float)) and math.isfinite(min_improvement)):
        raise ValueError(f"minImprovement must be a finite number, got {min_improvement!r}")
    if min_improvement < 0:
        raise ValueError(f"minImprovement must be >= 0, got {min_improvement!r}")
    scored = score_plan(current, observed_loads)
    before = scored.balancedness
    if current.strategy != "balanced":
        return RebalanceDecision(
            None,
            f"strategy {current.strategy} ignores load; only balanced plans rebalance",
            before,
            before,
            0,
        )
    if all(sum(lp.gpu_load) == 0 for lp in scored.layers):
        return RebalanceDecision(None, "no expert load observed yet", before, before, 0)
    new = plan_placement(
        observed_loads,
        num_gpus=current.num_gpus,
        num_nodes=current.num_nodes,
        redundant_experts=current.redundant_experts,
        strategy="balanced",
        current=current,
        max_moves=max_moves,
    )
    after = new.balancedness
    moved = sum(lp.moved for lp in new.layers)
    gain = before - after
    figures = f"balancedness {before:.3f} -> {after:.3f}"
    if moved == 0 or gain < min_improvement:
        return RebalanceDecision(
            None,
            f"{figures} improves by {gain:.3f} < minImprovement {min_improvement:g}; kept",
            before,
            after,
            moved,
        )
    return RebalanceDecision(
        new,
        f"{figures} (improves by {gain:.3f} >= {min_improvement:g}); moved {moved} experts",
        before,
        after,
        moved,
    )
