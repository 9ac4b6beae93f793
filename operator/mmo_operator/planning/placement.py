"""Expert placement: which GPU holds which copy of which expert, per MoE layer.

``plan_placement`` turns a load matrix ``[layers][experts]`` into the placement
contract (``mmo_serving.config.PlacementPlan``). Strategies:

- ``balanced``: give the redundant copies to the experts with the most load per copy,
  then pack the copies so that every GPU holds the same number and the heaviest GPU is
  as light as possible (largest first into the lightest GPU, then improving swaps).
  With several nodes, node totals are balanced first, then the GPUs of each node.
- ``contiguous``: expert ``e`` on GPU ``e * num_gpus // num_experts``.
- ``roundRobin``: expert ``e`` on GPU ``e % num_gpus``.

The two load-oblivious layouts place redundant copies (given to the hottest experts
the same way) in the free slots, and pad with ``EMPTY_SLOT``. With ``current``, a
``balanced`` plan is re-planned with low churn (see ``churn.py``): it moves few experts
and stays within ``churn_tolerance`` of the balancedness of a plan from scratch.
Pure: numpy and pydantic only.
"""

from __future__ import annotations

from typing import Any, get_args

import numpy as np

from mmo_operator.planning import churn, packing
from mmo_operator.planning.loads import load_matrix
from mmo_serving.config import EMPTY_SLOT, LayerPlacement, Placement, PlacementPlan

STRATEGIES: tuple[str, ...] = get_args(Placement)
DEFAULT_CHURN_TOLERANCE = 0.02


# ---------------------------------------------------------------------------- checks


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def slots_needed(
    num_experts: int, redundant_experts: int, num_gpus: int, strategy: str = "balanced"
) -> int:
    """Expert slots each GPU needs for a strategy (ValueError when ``balanced`` can't)."""
    total = num_experts + redundant_experts
    if strategy != "balanced":
        return -(-total // num_gpus)
    if total % num_gpus:
        fixes = " or ".join(map(str, nearest_redundant(num_experts, redundant_experts, num_gpus)))
        raise ValueError(
            f"balanced placement gives every GPU the same number of experts, so "
            f"numExperts + redundantExperts must be a multiple of numGpus: "
            f"{num_experts} + {redundant_experts} = {total} is not a multiple of "
            f"{num_gpus}; use redundantExperts {fixes}"
        )
    return total // num_gpus


def nearest_redundant(num_experts: int, redundant_experts: int, num_gpus: int) -> list[int]:
    """The redundantExperts values nearest to the given one that balanced placement
    accepts (numExperts + redundantExperts a multiple of numGpus): the value itself when
    it works, else the one below (when >= 0) and the one above, in that order."""
    short = (num_experts + redundant_experts) % num_gpus
    if not short:
        return [redundant_experts]
    below, above = redundant_experts - short, redundant_experts - short + num_gpus
    return [below, above] if below >= 0 else [above]


def max_redundant(num_experts: int, num_gpus: int, slots_per_gpu: int) -> int:
    """Most redundant copies that fit: memory, and at most one copy per GPU per expert."""
    return max(0, min(num_gpus * slots_per_gpu - num_experts, num_experts * (num_gpus - 1)))


def check_redundant_fits(
    *,
    num_experts: int,
    redundant_experts: int,
    num_gpus: int,
    slots_per_gpu: int | None = None,
    strategy: str = "balanced",
) -> int:
    """Check that the copies fit in memory and on distinct GPUs; return slots per GPU.

    ``slots_per_gpu`` is the capacity planner's limit (expert copies one GPU's memory
    holds); None means no memory limit.
    """
    num_experts = _positive_int("numExperts", num_experts)
    num_gpus = _positive_int("numGpus", num_gpus)
    redundant_experts = _positive_int("redundantExperts", redundant_experts, 0)
    if redundant_experts > num_experts * (num_gpus - 1):
        raise ValueError(
            f"redundantExperts={redundant_experts} is too many: copies of one expert must "
            f"sit on distinct GPUs, so {num_experts} experts on {num_gpus} GPUs allow at "
            f"most {num_experts * (num_gpus - 1)} redundant copies"
        )
    if slots_per_gpu is not None:
        slots_per_gpu = _positive_int("slotsPerGpu", slots_per_gpu)
        capacity = num_gpus * slots_per_gpu
        if num_experts + redundant_experts > capacity:
            fit = max_redundant(num_experts, num_gpus, slots_per_gpu)
            if num_experts > capacity:
                detail = f"not even the {num_experts} experts without copies fit"
            else:
                detail = f"at most {fit} redundant copies fit"
            raise ValueError(
                f"{num_experts} experts + {redundant_experts} redundant copies need "
                f"{num_experts + redundant_experts} expert slots, but memory holds "
                f"{slots_per_gpu} per GPU x {num_gpus} GPUs = {capacity}: {detail}"
            )
    return slots_needed(num_experts, redundant_experts, num_gpus, strategy)


# ---------------------------------------------------------------------------- layouts


def _balanced_slots(load: np.ndarray, redundant: int, num_gpus: int, num_nodes: int) -> np.ndarray:
    """Slots (GPU-major, expert ids sorted within a GPU) of the balanced strategy."""
    num_experts = len(load)
    copies = packing.replicate(load, redundant, num_gpus)
    experts, weights = packing.expand(load, copies)
    per_node = num_gpus // num_nodes
    if num_nodes == 1:
        gpu = packing.pack(experts, weights, num_bins=num_gpus, max_same=1, num_experts=num_experts)
    else:
        node = packing.pack(
            experts, weights, num_bins=num_nodes, max_same=per_node, num_experts=num_experts
        )
        gpu = np.empty_like(node)
        for n in range(num_nodes):
            mine = np.flatnonzero(node == n)
            local = packing.pack(
                experts[mine],
                weights[mine],
                num_bins=per_node,
                max_same=1,
                num_experts=num_experts,
            )
            gpu[mine] = n * per_node + local
    return experts[np.lexsort((experts, gpu))]


def _oblivious_slots(
    load: np.ndarray, redundant: int, num_gpus: int, slots_per_gpu: int, strategy: str
) -> np.ndarray:
    """Contiguous or round-robin primaries, copies in free slots, EMPTY_SLOT padding."""
    num_experts = len(load)
    ids = np.arange(num_experts)
    home = ids * num_gpus // num_experts if strategy == "contiguous" else ids % num_gpus
    held: list[list[int]] = [[] for _ in range(num_gpus)]
    for e, where in enumerate(home):
        held[int(where)].append(e)
    copies = packing.replicate(load, redundant, num_gpus)
    extra = [e for e in np.argsort(-load / copies, kind="stable") for _ in range(copies[e] - 1)]
    for e in extra:
        free = [g for g in range(num_gpus) if len(held[g]) < slots_per_gpu]
        allowed = [g for g in free if e not in held[g]] or free
        held[max(allowed, key=lambda g: (slots_per_gpu - len(held[g]), -g))].append(int(e))
    experts = np.array([e for h in held for e in h], dtype=np.int64)
    bins = np.array([g for g, h in enumerate(held) for _ in h], dtype=np.int64)
    weights = (load / copies)[experts]
    counts = packing._counts(experts, bins, num_gpus, num_experts)
    if counts.max() > 1:  # rare: a copy had only GPUs holding it left; swap it away
        gpu_load = np.bincount(bins, weights=weights, minlength=num_gpus)
        packing._repair(experts, weights, bins, gpu_load, counts, 1)
    slots = np.full(num_gpus * slots_per_gpu, EMPTY_SLOT, dtype=np.int64)
    for g in range(num_gpus):
        mine = experts[bins == g]
        order = sorted(mine, key=lambda e: (home[e] != g, e))  # primaries first
        slots[g * slots_per_gpu : g * slots_per_gpu + len(order)] = order
    return slots


# ---------------------------------------------------------------------------- scoring


def _present(slots: np.ndarray, num_gpus: int, num_experts: int) -> np.ndarray:
    spg = len(slots) // num_gpus
    used = slots != EMPTY_SLOT
    present = np.zeros((num_gpus, num_experts), dtype=bool)
    present[(np.arange(len(slots)) // spg)[used], slots[used]] = True
    return present


def _layer(
    index: int, load: np.ndarray, slots: np.ndarray, num_gpus: int, moved: int = 0
) -> LayerPlacement:
    num_experts = len(load)
    spg = len(slots) // num_gpus
    used = slots != EMPTY_SLOT
    copies = np.bincount(slots[used], minlength=num_experts)
    if (copies == 0).any():
        missing = int(np.flatnonzero(copies == 0)[0])
        raise ValueError(f"layer {index}: expert {missing} is in no slot")
    weight = np.where(used, (load / np.maximum(copies, 1))[np.where(used, slots, 0)], 0.0)
    gpu_load = np.bincount(np.arange(len(slots)) // spg, weights=weight, minlength=num_gpus)
    return LayerPlacement(
        layer=index,
        slots=slots.tolist(),
        replicas=copies.tolist(),
        gpu_load=gpu_load.tolist(),
        balancedness=balancedness(gpu_load),
        moved=moved,
    )


def balancedness(gpu_load: Any) -> float:
    """max/mean GPU load; 1.0 when nothing is loaded."""
    arr = np.asarray(gpu_load, dtype=np.float64)
    mean = float(arr.mean()) if arr.size else 0.0
    return float(arr.max() / mean) if mean > 0 else 1.0


def best_balancedness_without_copies(load: Any, num_gpus: int) -> float:
    """A lower bound on the balancedness of any one-copy-per-expert plan of one layer.

    See ``packing.lower_bound``; with ``num_experts % num_gpus != 0`` only the
    pigeonhole part applies (GPUs may hold different numbers of experts).
    """
    arr = np.asarray(load, dtype=np.float64)
    total = float(arr.sum())
    if total <= 0:
        return 1.0
    mean = total / num_gpus
    return packing.lower_bound(arr, num_gpus, equal=len(arr) % num_gpus == 0) / mean


def _plan(
    strategy: str,
    num_gpus: int,
    num_nodes: int,
    slots_per_gpu: int,
    num_experts: int,
    redundant: int,
    layers: list[LayerPlacement],
) -> PlacementPlan:
    return PlacementPlan(
        strategy=strategy,
        num_gpus=num_gpus,
        num_nodes=num_nodes,
        slots_per_gpu=slots_per_gpu,
        num_experts=num_experts,
        redundant_experts=redundant,
        layers=layers,
        balancedness=max(lp.balancedness for lp in layers),
    )


def score_plan(plan: PlacementPlan, loads: Any) -> PlacementPlan:
    """The same placement scored on other loads (GPU loads, balancedness; moved = 0)."""
    matrix = _matching_loads(plan, loads)
    layers = [
        _layer(i, matrix[i], np.asarray(lp.slots, dtype=np.int64), plan.num_gpus)
        for i, lp in enumerate(plan.layers)
    ]
    return plan.model_copy(
        update={"layers": layers, "balancedness": max(lp.balancedness for lp in layers)}
    )


def _matching_loads(plan: PlacementPlan, loads: Any) -> np.ndarray:
    matrix = load_matrix(loads)
    if matrix.shape != (len(plan.layers), plan.num_experts):
        raise ValueError(
            f"loads are {matrix.shape[0]} layers x {matrix.shape[1]} experts, but the plan "
            f"has {len(plan.layers)} layers x {plan.num_experts} experts"
        )
    return matrix


def moved_experts(current: PlacementPlan, new: PlacementPlan) -> list[int]:
    """Per layer, (expert, GPU) pairs that ``new`` holds and ``current`` did not."""
    if current.num_gpus != new.num_gpus or len(current.layers) != len(new.layers):
        raise ValueError(
            f"plans differ in shape: {len(current.layers)} layers on {current.num_gpus} "
            f"GPUs vs {len(new.layers)} layers on {new.num_gpus} GPUs"
        )
    num_experts = max(current.num_experts, new.num_experts)
    out = []
    for old, cur in zip(current.layers, new.layers, strict=True):
        before = _present(np.asarray(old.slots), current.num_gpus, num_experts)
        after = _present(np.asarray(cur.slots), new.num_gpus, num_experts)
        out.append(int((after & ~before).sum()))
    return out


# ---------------------------------------------------------------------------- relabel


def _relabel(
    slots: np.ndarray, current: np.ndarray, num_gpus: int, num_nodes: int, num_experts: int
) -> np.ndarray:
    """Renumber the GPUs of a fresh plan (nodes kept whole) to keep most experts home.

    The GPUs of a plan from scratch are interchangeable; matching them greedily to the
    GPUs of the current plan by shared experts avoids moves a renumbering would cause.
    Experts that stay on a GPU keep their slot index.
    """
    spg = len(slots) // num_gpus
    per_node = num_gpus // num_nodes
    after = _present(slots, num_gpus, num_experts).astype(np.int64)
    before = _present(current, num_gpus, num_experts).astype(np.int64)
    overlap = after @ before.T  # [new gpu, old gpu]
    node_overlap = overlap.reshape(num_nodes, per_node, num_nodes, per_node).sum(axis=(1, 3))
    mapping = np.empty(num_gpus, dtype=np.int64)
    for new_node, old_node in _greedy_match(node_overlap):
        block = overlap[
            new_node * per_node : (new_node + 1) * per_node,
            old_node * per_node : (old_node + 1) * per_node,
        ]
        for a, b in _greedy_match(block):
            mapping[new_node * per_node + a] = old_node * per_node + b
    result = np.empty_like(slots)
    for g in range(num_gpus):
        target = int(mapping[g])
        result[target * spg : (target + 1) * spg] = _align(
            slots[g * spg : (g + 1) * spg], current[target * spg : (target + 1) * spg]
        )
    return result


def _align(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Order the experts of ``new`` so that those also in ``old`` keep their index."""
    out = np.full(len(new), EMPTY_SLOT, dtype=np.int64)
    incoming = set(int(e) for e in new if e != EMPTY_SLOT)
    for k, e in enumerate(old):
        if int(e) in incoming:
            out[k] = e
            incoming.discard(int(e))
    free = [k for k in range(len(new)) if out[k] == EMPTY_SLOT]
    for k, e in zip(free, sorted(incoming), strict=True):
        out[k] = e
    return out


def _greedy_match(overlap: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, column) of largest overlap first, each row and column once."""
    n = overlap.shape[0]
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        a, b = divmod(int(flat), n)
        if a in used_rows or b in used_cols:
            continue
        used_rows.add(a)
        used_cols.add(b)
        pairs.append((a, b))
        if len(pairs) == n:
            break
    return pairs


# ---------------------------------------------------------------------------- planner


def plan_placement(
    loads: Any,
    *,
    num_gpus: int,
    num_nodes: int = 1,
    slots_per_gpu: int | None = None,
    redundant_experts: int = 0,
    strategy: str = "balanced",
    current: PlacementPlan | None = None,
    max_moves: int | None = None,
    churn_tolerance: float = DEFAULT_CHURN_TOLERANCE,
    low_churn: bool = True,
) -> PlacementPlan:
    """Plan where every expert copy lives, layer by layer.

    ``loads`` is ``[layers][experts]`` (uniform when the caller has none, see
    ``loads.uniform_loads``). ``slots_per_gpu`` is the memory limit from the capacity
    planner (None: no limit). With ``current`` (same GPUs, layers and experts) each
    layer reports ``moved`` (experts copied to a GPU that did not hold them) and a
    ``balanced`` plan is re-planned with low churn: at most ``max_moves`` moves per
    layer and never more than a plan from scratch, within ``churn_tolerance`` of its
    balancedness when that is reachable. ``low_churn=False`` re-plans from scratch
    (GPUs renumbered to keep what they can) and only reports the moves.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is unknown; valid: {', '.join(STRATEGIES)}")
    num_gpus = _positive_int("numGpus", num_gpus)
    num_nodes = _positive_int("numNodes", num_nodes)
    if num_gpus % num_nodes:
        raise ValueError(
            f"numGpus={num_gpus} must be a multiple of numNodes={num_nodes} "
            "(every node has the same number of GPUs)"
        )
    matrix = load_matrix(loads)
    num_layers, num_experts = matrix.shape
    redundant = _positive_int("redundantExperts", redundant_experts, 0)
    spg = check_redundant_fits(
        num_experts=num_experts,
        redundant_experts=redundant,
        num_gpus=num_gpus,
        slots_per_gpu=slots_per_gpu,
        strategy=strategy,
    )
    budget = float("inf") if max_moves is None else _positive_int("maxMoves", max_moves, 0)
    if not (np.isfinite(churn_tolerance) and churn_tolerance >= 0):
        raise ValueError(f"churnTolerance must be finite and >= 0, got {churn_tolerance!r}")
    if current is not None:
        _check_current(current, num_gpus, num_layers, num_experts)
    layers = []
    for i, load in enumerate(matrix):
        if strategy == "balanced":
            slots = _balanced_slots(load, redundant, num_gpus, num_nodes)
        else:
            slots = _oblivious_slots(load, redundant, num_gpus, spg, strategy)
        if current is None:
            layers.append(_layer(i, load, slots, num_gpus))
            continue
        now = np.asarray(current.layers[i].slots, dtype=np.int64)
        before = _present(now, num_gpus, num_experts)
        if strategy == "balanced" and len(now) == len(slots):
            renumbered = _relabel(slots, now, num_gpus, num_nodes, num_experts)
            if _moves(renumbered, before, num_gpus) <= _moves(slots, before, num_gpus):
                slots = renumbered
        fresh = _layer(i, load, slots, num_gpus, _moves(slots, before, num_gpus))
        if low_churn and strategy == "balanced" and _can_churn(now, spg, num_gpus, num_experts):
            fresh = _low_churn_layer(
                i, load, now, before, fresh, spg, num_gpus, budget, churn_tolerance
            )
        layers.append(fresh)
    return _plan(strategy, num_gpus, num_nodes, spg, num_experts, redundant, layers)


def _moves(slots: np.ndarray, before: np.ndarray, num_gpus: int) -> int:
    after = _present(slots, num_gpus, before.shape[1])
    return int((after & ~before).sum())


def _check_current(
    current: PlacementPlan, num_gpus: int, num_layers: int, num_experts: int
) -> None:
    have = (current.num_gpus, len(current.layers), current.num_experts)
    want = (num_gpus, num_layers, num_experts)
    if have != want:
        raise ValueError(
            f"the current plan has {have[0]} GPUs, {have[1]} layers and {have[2]} experts, "
            f"but this plan has {want[0]} GPUs, {want[1]} layers and {want[2]} experts; "
            "moves are only defined between plans of the same shape (plan without current)"
        )


def _can_churn(now: np.ndarray, spg: int, num_gpus: int, num_experts: int) -> bool:
    """Low churn starts from the current slots: same slot count, full, valid."""
    if len(now) != spg * num_gpus or (now == EMPTY_SLOT).any():
        return False
    if len(np.unique(now)) != num_experts:
        return False
    per_gpu = now.reshape(num_gpus, spg)
    return all(len(np.unique(row)) == spg for row in per_gpu)


def _low_churn_layer(
    index: int,
    load: np.ndarray,
    now: np.ndarray,
    before: np.ndarray,
    fresh: LayerPlacement,
    spg: int,
    num_gpus: int,
    budget: float,
    tolerance: float,
) -> LayerPlacement:
    target = fresh.balancedness + tolerance
    allowed = int(min(budget, fresh.moved))
    slots, moved = churn.low_churn(
        load,
        now,
        num_gpus=num_gpus,
        slots_per_gpu=spg,
        target=target,
        budget=allowed,
        original=before,
    )
    kept = _layer(index, load, slots, num_gpus, moved)
    if kept.balancedness <= target + 1e-9 or fresh.moved > budget:
        return kept
    return fresh if fresh.balancedness < kept.balancedness else kept
