"""Invariants of every placement plan, on random shapes and loads (hypothesis)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmo_operator.planning.placement import (
    best_balancedness_without_copies,
    moved_experts,
    plan_placement,
)
from mmo_serving.config import EMPTY_SLOT, PlacementPlan

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

load_value = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=10_000).map(float),
)


@st.composite
def problems(draw: st.DrawFn, strategy: str | None = None) -> dict:
    """A valid planning problem: shape, strategy, memory limit and loads."""
    strat = strategy or draw(st.sampled_from(["balanced", "contiguous", "roundRobin"]))
    num_gpus = draw(st.integers(1, 8))
    num_nodes = draw(st.sampled_from([n for n in (1, 2, 4) if num_gpus % n == 0]))
    num_experts = draw(st.integers(1, 20))
    most = min(num_experts * (num_gpus - 1), 16)
    redundant = draw(st.integers(0, most))
    if strat == "balanced":
        redundant -= (num_experts + redundant) % num_gpus
        if redundant < 0:
            redundant += num_gpus
        if redundant > num_experts * (num_gpus - 1):
            num_experts = num_gpus * draw(st.integers(1, 3))
            redundant = 0
    needed = -(-(num_experts + redundant) // num_gpus)
    limit = draw(st.one_of(st.none(), st.integers(needed, needed + 3)))
    layers = draw(st.integers(1, 3))
    loads = draw(
        st.lists(
            st.lists(load_value, min_size=num_experts, max_size=num_experts),
            min_size=layers,
            max_size=layers,
        )
    )
    return {
        "loads": loads,
        "num_gpus": num_gpus,
        "num_nodes": num_nodes if strat == "balanced" else 1,
        "slots_per_gpu": limit,
        "redundant_experts": redundant,
        "strategy": strat,
    }


def check_invariants(plan: PlacementPlan, problem: dict) -> None:
    loads = np.asarray(problem["loads"], dtype=float)
    num_gpus = problem["num_gpus"]
    num_experts = loads.shape[1]
    spg = plan.slots_per_gpu
    assert plan.num_gpus == num_gpus
    assert plan.num_experts == num_experts
    if problem["slots_per_gpu"] is not None:
        assert spg <= problem["slots_per_gpu"], "memory limit exceeded"
    assert len(plan.layers) == len(loads)
    for lp, load in zip(plan.layers, loads, strict=True):
        assert len(lp.slots) == num_gpus * spg
        held = [e for e in lp.slots if e != EMPTY_SLOT]
        counts = Counter(held)
        # every expert placed at least once, replicas match the slots
        assert sorted(counts) == list(range(num_experts))
        assert lp.replicas == [counts[e] for e in range(num_experts)]
        assert sum(lp.replicas) == num_experts + problem["redundant_experts"]
        for g in range(num_gpus):
            mine = plan.experts_on_gpu(lp.layer, g)
            assert len(mine) == len(set(mine)), f"two copies of one expert on GPU {g}"
            if plan.strategy == "balanced":
                assert len(mine) == spg, "balanced GPUs hold the same number of experts"
        # load conserved and GPU loads recomputable from the slots
        assert sum(lp.gpu_load) == pytest.approx(load.sum(), rel=1e-9, abs=1e-9)
        expect = [
            sum(load[e] / counts[e] for e in plan.experts_on_gpu(lp.layer, g))
            for g in range(num_gpus)
        ]
        assert lp.gpu_load == pytest.approx(expect, rel=1e-9, abs=1e-9)
        mean = load.sum() / num_gpus
        want = max(expect) / mean if mean > 0 else 1.0
        assert lp.balancedness == pytest.approx(want, rel=1e-9)
        assert lp.moved == 0
    assert plan.balancedness == max(lp.balancedness for lp in plan.layers)
    # the plan survives its own JSON round trip (the contract)
    assert PlacementPlan.model_validate(plan.model_dump(by_alias=True)) == plan


@SETTINGS
@given(problems())
def test_every_plan_keeps_the_invariants(problem: dict) -> None:
    check_invariants(plan_placement(**problem), problem)


@SETTINGS
@given(problems(strategy="balanced"))
def test_balanced_never_beats_the_lower_bound(problem: dict) -> None:
    problem = {**problem, "redundant_experts": 0}
    if len(problem["loads"][0]) % problem["num_gpus"]:
        return
    plan = plan_placement(**problem)
    for lp, load in zip(plan.layers, problem["loads"], strict=True):
        bound = best_balancedness_without_copies(load, problem["num_gpus"])
        assert lp.balancedness >= bound - 1e-9


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_lower_bound_is_below_the_brute_force_optimum(data: st.DataObject) -> None:
    num_gpus = data.draw(st.integers(1, 3))
    per_gpu = data.draw(st.integers(1, 6 // num_gpus))
    size = num_gpus * per_gpu
    load = data.draw(st.lists(st.integers(0, 100).map(float), min_size=size, max_size=size))
    total = sum(load)
    best = float("inf")
    for perm in itertools.permutations(range(size)):  # every equal split, exhaustively
        gpus = [perm[g * per_gpu : (g + 1) * per_gpu] for g in range(num_gpus)]
        best = min(best, max(sum(load[e] for e in grp) for grp in gpus))
    optimum = best / (total / num_gpus) if total else 1.0
    assert best_balancedness_without_copies(load, num_gpus) <= optimum + 1e-9
    plan = plan_placement([load], num_gpus=num_gpus)
    assert plan.balancedness >= optimum - 1e-9


@st.composite
def drifts(draw: st.DrawFn) -> tuple[dict, list[list[float]], int | None]:
    problem = draw(problems(strategy="balanced"))
    rows, width = len(problem["loads"]), len(problem["loads"][0])
    new = draw(
        st.lists(st.lists(load_value, min_size=width, max_size=width), min_size=rows, max_size=rows)
    )
    budget = draw(st.one_of(st.none(), st.integers(0, 6)))
    return problem, new, budget


@SETTINGS
@given(drifts())
def test_low_churn_keeps_invariants_and_moves_no_more_than_scratch(case) -> None:
    problem, new_loads, budget = case
    current = plan_placement(**problem)
    again = {**problem, "loads": new_loads}
    churned = plan_placement(**again, current=current, max_moves=budget)
    scratch = plan_placement(**again)
    relabeled = plan_placement(**again, current=current, low_churn=False)
    stripped = churned.model_copy(
        update={"layers": [lp.model_copy(update={"moved": 0}) for lp in churned.layers]}
    )
    check_invariants(stripped, again)
    recount = moved_experts(current, churned)
    assert [lp.moved for lp in churned.layers] == recount
    assert [lp.moved for lp in relabeled.layers] == moved_experts(current, relabeled)
    for lc, fresh, rel in zip(
        recount, moved_experts(current, scratch), moved_experts(current, relabeled), strict=True
    ):
        assert lc <= rel <= fresh
        if budget is not None:
            assert lc <= budget
