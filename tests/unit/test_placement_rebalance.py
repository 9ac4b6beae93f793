"""The rebalance timer's pure decision: apply a low-churn plan only when it pays."""

from __future__ import annotations

import numpy as np
import pytest

from mmo_operator.planning.placement import moved_experts, plan_placement, score_plan
from mmo_operator.planning.rebalance_decision import should_rebalance


def skewed(num_layers: int, num_experts: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, num_experts + 1)
    p /= p.sum()
    return np.array(
        [rng.multinomial(50_000, p[rng.permutation(num_experts)]) for _ in range(num_layers)],
        dtype=float,
    )


def test_skewed_traffic_on_a_uniform_plan_is_rebalanced() -> None:
    current = plan_placement([[1.0] * 32] * 2, num_gpus=8, redundant_experts=8)
    observed = skewed(2, 32, seed=1)
    decision = should_rebalance(current, observed, 0.05)
    assert decision.plan is not None
    assert decision.balancedness_before == pytest.approx(score_plan(current, observed).balancedness)
    assert decision.balancedness_after == pytest.approx(decision.plan.balancedness)
    assert decision.balancedness_after <= decision.balancedness_before - 0.05
    assert decision.balancedness_after <= 1.1
    assert decision.moved == sum(moved_experts(current, decision.plan)) > 0
    assert decision.reason.startswith(
        f"balancedness {decision.balancedness_before:.3f} -> {decision.balancedness_after:.3f}"
    )
    assert f"moved {decision.moved} experts" in decision.reason
    # the new plan fits the running engine: same GPUs, slots and copies in total
    assert decision.plan.slots_per_gpu == current.slots_per_gpu
    assert decision.plan.redundant_experts == current.redundant_experts


def test_a_small_gain_is_not_worth_the_moves() -> None:
    observed = skewed(2, 32, seed=2)
    current = plan_placement(observed, num_gpus=8, redundant_experts=8)
    # the same traffic again: the plan is already as good as it gets
    decision = should_rebalance(current, observed, 0.01)
    assert decision.plan is None
    assert decision.reason.endswith("< minImprovement 0.01; kept")
    # a big gain below a huge threshold is kept too
    uniform = plan_placement([[1.0] * 32] * 2, num_gpus=8, redundant_experts=8)
    blocked = should_rebalance(uniform, observed, 5.0)
    assert blocked.plan is None
    assert blocked.balancedness_after < blocked.balancedness_before


def test_move_budget_is_passed_through() -> None:
    current = plan_placement([[1.0] * 32] * 2, num_gpus=8, redundant_experts=8)
    decision = should_rebalance(current, skewed(2, 32, seed=3), 0.0, max_moves=2)
    assert decision.plan is not None
    assert all(lp.moved <= 2 for lp in decision.plan.layers)


def test_no_traffic_and_load_oblivious_plans_never_rebalance() -> None:
    current = plan_placement([[1.0] * 16], num_gpus=4)
    quiet = should_rebalance(current, [[0.0] * 16], 0.0)
    assert quiet.plan is None and quiet.reason == "no expert load observed yet"
    contiguous = plan_placement([[1.0] * 16], num_gpus=4, strategy="contiguous")
    fixed = should_rebalance(contiguous, skewed(1, 16, seed=4), 0.0)
    assert fixed.plan is None
    assert fixed.reason == "strategy contiguous ignores load; only balanced plans rebalance"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-0.1, "minImprovement must be >= 0, got -0.1"),
        (float("nan"), "minImprovement must be a finite number, got nan"),
        ("0.1", "minImprovement must be a finite number, got '0.1'"),
    ],
)
def test_bad_min_improvement(value: object, message: str) -> None:
    current = plan_placement([[1.0] * 16], num_gpus=4)
    with pytest.raises(ValueError) as err:
        should_rebalance(current, [[1.0] * 16], value)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_observed_loads_of_another_shape_are_refused() -> None:
    current = plan_placement([[1.0] * 16], num_gpus=4)
    with pytest.raises(ValueError, match="loads are 1 layers x 15 experts, but the plan has 1"):
        should_rebalance(current, [[1.0] * 15], 0.1)
