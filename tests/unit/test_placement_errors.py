"""Every bad input to the planner is refused with a message saying what and why."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmo_operator.planning.placement import (
    check_redundant_fits,
    max_redundant,
    moved_experts,
    plan_placement,
    score_plan,
    slots_needed,
)

UNIFORM = [[1.0] * 8, [1.0] * 8]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "greedy"}, "strategy 'greedy' is unknown; valid: balanced, contiguous"),
        ({"num_gpus": 0}, "numGpus must be an integer >= 1, got 0"),
        ({"num_gpus": 2.5}, "numGpus must be an integer >= 1, got 2.5"),
        ({"num_gpus": True}, "numGpus must be an integer >= 1, got True"),
        ({"num_nodes": 0}, "numNodes must be an integer >= 1, got 0"),
        ({"num_nodes": 3}, "numGpus=4 must be a multiple of numNodes=3"),
        ({"redundant_experts": -1}, "redundantExperts must be an integer >= 0, got -1"),
        ({"slots_per_gpu": 0}, "slotsPerGpu must be an integer >= 1, got 0"),
        ({"max_moves": -1}, "maxMoves must be an integer >= 0, got -1"),
        ({"churn_tolerance": -0.1}, "churnTolerance must be finite and >= 0, got -0.1"),
        ({"churn_tolerance": math.nan}, "churnTolerance must be finite and >= 0, got nan"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"num_gpus": 4, **kwargs}
    with pytest.raises(ValueError, match="^" + _escape(message)):
        plan_placement(UNIFORM, **args)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_balanced_needs_a_multiple_of_the_gpu_count_and_says_which_values_work() -> None:
    with pytest.raises(ValueError) as err:
        plan_placement([[1.0] * 64], num_gpus=8, redundant_experts=3)
    assert str(err.value) == (
        "balanced placement gives every GPU the same number of experts, so "
        "numExperts + redundantExperts must be a multiple of numGpus: 64 + 3 = 67 is not "
        "a multiple of 8; use redundantExperts 0 or 8"
    )
    with pytest.raises(ValueError, match=r"use redundantExperts 3$"):
        plan_placement([[1.0] * 5], num_gpus=4)
    # the load-oblivious strategies pad instead
    assert plan_placement([[1.0] * 64], num_gpus=8, redundant_experts=3, strategy="contiguous")


def test_memory_limit_says_how_many_copies_fit() -> None:
    with pytest.raises(ValueError) as err:
        plan_placement([[1.0] * 64], num_gpus=8, redundant_experts=16, slots_per_gpu=9)
    assert str(err.value) == (
        "64 experts + 16 redundant copies need 80 expert slots, but memory holds 9 per GPU "
        "x 8 GPUs = 72: at most 8 redundant copies fit"
    )
    with pytest.raises(ValueError, match="not even the 64 experts without copies fit"):
        plan_placement([[1.0] * 64], num_gpus=8, slots_per_gpu=7)
    with pytest.raises(ValueError, match="memory holds 4 per GPU x 4 GPUs = 16"):
        plan_placement(
            [[1.0] * 16], num_gpus=4, redundant_experts=1, strategy="roundRobin", slots_per_gpu=4
        )


def test_more_copies_than_gpus_can_hold_apart() -> None:
    with pytest.raises(ValueError) as err:
        plan_placement([[1.0] * 2], num_gpus=2, redundant_experts=4)
    assert str(err.value) == (
        "redundantExperts=4 is too many: copies of one expert must sit on distinct GPUs, "
        "so 2 experts on 2 GPUs allow at most 2 redundant copies"
    )


def test_check_redundant_fits_and_helpers() -> None:
    assert (
        check_redundant_fits(num_experts=64, redundant_experts=8, num_gpus=8, slots_per_gpu=9) == 9
    )
    assert (
        check_redundant_fits(num_experts=60, redundant_experts=1, num_gpus=8, strategy="contiguous")
        == 8
    )
    assert max_redundant(64, 8, 9) == 8
    assert max_redundant(4, 2, 100) == 4  # one copy per GPU caps it
    assert slots_needed(10, 0, 4, "roundRobin") == 3
    with pytest.raises(ValueError, match="at most 8 redundant copies fit"):
        check_redundant_fits(num_experts=64, redundant_experts=9, num_gpus=8, slots_per_gpu=9)
    with pytest.raises(ValueError, match="numExperts must be an integer >= 1, got 0"):
        check_redundant_fits(num_experts=0, redundant_experts=0, num_gpus=8)


@pytest.mark.parametrize(
    ("loads", "message"),
    [
        ([], "loads must be a non-empty [layers][experts] list, got list"),
        ("1,2", "loads must be a non-empty [layers][experts] list, got str"),
        ([5.0], "loads: layer 0 is float, expected a list of numbers"),
        ([[]], "loads: layer 0 has no experts"),
        ([[1.0, 2.0], [1.0]], "loads: layer 1 has 1 experts but layer 0 has 2"),
        ([[1.0, -2.0]], "loads: layer 0 expert 1 is -2.0: loads must be finite and >= 0"),
        ([[1.0], [math.nan]], "loads: layer 1 expert 0 is nan: loads must be finite and >= 0"),
        ([[math.inf]], "loads: layer 0 expert 0 is inf: loads must be finite and >= 0"),
        ([[1.0, "3"]], "loads: layer 0 expert 1 is '3': loads must be numbers"),
        ([[True]], "loads: layer 0 expert 0 is True: loads must be numbers"),
        (np.zeros((2, 0)), "loads must be a [layers][experts] matrix with at least one"),
        (np.zeros(3), "loads must be a [layers][experts] matrix with at least one"),
        (np.array([[1.0, -1.0]]), "loads: layer 0 expert 1 is -1.0: loads must be finite"),
    ],
)
def test_bad_loads(loads: object, message: str) -> None:
    with pytest.raises(ValueError, match="^" + _escape(message)):
        plan_placement(loads, num_gpus=1)


def test_numpy_integer_loads_are_numbers() -> None:
    plan = plan_placement([np.arange(4, dtype=np.int64)], num_gpus=2)
    assert sum(plan.layers[0].gpu_load) == 6


def test_current_plan_of_another_shape_is_refused() -> None:
    current = plan_placement(UNIFORM, num_gpus=4)
    with pytest.raises(ValueError) as err:
        plan_placement(UNIFORM, num_gpus=2, current=current)
    assert str(err.value).startswith(
        "the current plan has 4 GPUs, 2 layers and 8 experts, but this plan has 2 GPUs, "
        "2 layers and 8 experts"
    )
    with pytest.raises(ValueError, match="current plan has 4 GPUs, 2 layers and 8 experts"):
        plan_placement([[1.0] * 8], num_gpus=4, current=current)
    with pytest.raises(ValueError, match="plans differ in shape"):
        moved_experts(current, plan_placement(UNIFORM, num_gpus=2))


def test_score_plan_refuses_loads_of_another_shape() -> None:
    plan = plan_placement(UNIFORM, num_gpus=4)
    with pytest.raises(ValueError) as err:
        score_plan(plan, [[1.0] * 7, [1.0] * 7])
    assert str(err.value) == (
        "loads are 2 layers x 7 experts, but the plan has 2 layers x 8 experts"
    )
