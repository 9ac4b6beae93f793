"""Packing expert copies into bins (nodes or GPUs) that hold the same number of copies.

Internals of the ``balanced`` strategy, one layer at a time. An *item* is one physical
copy of a logical expert; its weight is the expert's load divided by its copies. A bin
holds exactly ``cap`` items and at most ``max_same`` copies of one expert (1 for a GPU:
two copies on one GPU are pointless; ``gpus_per_node`` for a node).
"""

from __future__ import annotations

import heapq

import numpy as np

# Improvements smaller than this fraction of the total load are noise.
_REL_EPS = 1e-9
# Refinement stops once the heaviest bin is within this fraction of the mean.
GOOD_ENOUGH = 1e-3
# Two-for-two swaps look at this many of the lightest bins.
_PAIR_PARTNERS = 4


def replicate(load: np.ndarray, redundant: int, max_copies: int) -> np.ndarray:
    """Copies per expert: each extra copy goes to the expert with the most load per copy.

    Ties go to the expert with fewer copies, then the lower index, so that zero or
    uniform loads spread copies over distinct experts. No expert gets more than
    ``max_copies`` (the GPU count: copies must sit on distinct GPUs).
    """
    copies = np.ones(len(load), dtype=np.int64)
    if redundant <= 0:
        return copies
    heap = [(-float(v), 1, e) for e, v in enumerate(load)]
    heapq.heapify(heap)
    for _ in range(redundant):
        _, _, e = heapq.heappop(heap)
        copies[e] += 1
        if copies[e] < max_copies:
            heapq.heappush(heap, (-float(load[e]) / copies[e], int(copies[e]), e))
    return copies


def expand(load: np.ndarray, copies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items (expert id, weight) for every copy, heaviest first (ties: lower expert id)."""
    experts = np.repeat(np.arange(len(load)), copies)
    weights = (load / copies)[experts]
    order = np.lexsort((experts, -weights))
    return experts[order], weights[order]


def lower_bound(weights: np.ndarray, num_bins: int, *, equal: bool = True) -> float:
    """A lower bound on the heaviest bin's load, over every way to pack ``weights``.

    Among the ``k`` heaviest items some bin holds at least ``c = ceil(k / num_bins)``;
    its load is at least the lightest ``c`` of them plus, when every bin holds exactly
    ``len / num_bins`` items (``equal``), the lightest of the other items to fill it.
    The bound is the largest of these over ``k``, and the mean.
    """
    arr = np.sort(np.asarray(weights, dtype=np.float64))[::-1]
    n = len(arr)
    cum = np.concatenate(([0.0], np.cumsum(arr)))
    k = np.arange(1, n + 1)
    c = -(-k // num_bins)
    bound = cum[k] - cum[k - c]
    if equal:
        need = n // num_bins - c
        rest = n - k
        tail = cum[n] - cum[np.clip(n - need, 0, n)]
        short = np.clip(need - rest, 0, None)
        borrowed = cum[k - c] - cum[np.clip(k - c - short, 0, None)]
        filler = np.where(rest >= need, tail, cum[n] - cum[k] + borrowed)
        bound = bound + np.where(need >= 0, filler, 0.0)
    return float(max(bound.max(), cum[n] / num_bins))


def _counts(experts: np.ndarray, bins: np.ndarray, num_bins: int, num_experts: int) -> np.ndarray:
    counts = np.zeros((num_bins, num_experts), dtype=np.int64)
    np.add.at(counts, (bins, experts), 1)
    return counts


def pack(
    experts: np.ndarray,
    weights: np.ndarray,
    *,
    num_bins: int,
    max_same: int,
    num_experts: int,
    max_iter: int | None = None,
) -> np.ndarray:
    """Assign items (sorted heaviest first) to ``num_bins`` bins of equal size.

    A start that gives each dominant item its own bin filled with the lightest items,
    then balanced largest differencing for the rest (``_peel_and_difference``), then
    swaps that
    repair conflicts (more than ``max_same`` copies of an expert in a bin), then swaps
    that lower the heaviest bin until none helps. Returns the bin of each item.
    """
    n = len(experts)
    if n % num_bins:
        raise ValueError(f"{n} items do not split evenly over {num_bins} bins")
    bins = _peel_and_difference(weights, num_bins)
    loads = np.bincount(bins, weights=weights, minlength=num_bins)
    counts = _counts(experts, bins, num_bins, num_experts)
    eps = _REL_EPS * float(weights.sum())
    _repair(experts, weights, bins, loads, counts, max_same)
    refine(experts, weights, bins, loads, counts, max_same, eps, max_iter or 4 * n)
    return bins


def _peel_and_difference(weights: np.ndarray, num_bins: int) -> np.ndarray:
    """Starting assignment: dominant items peeled off, the rest by differencing.

    While the heaviest item plus the lightest ones that fill its bin weigh more than the
    mean of the bins left, that bin is the bottleneck whatever else happens: it gets
    exactly those items (the lower bound for it) and the rest is packed without it.
    """
    n = len(weights)
    cap = n // num_bins
    bins = np.empty(n, dtype=np.int64)
    lo, hi = 0, n  # items lo..hi-1 (heaviest first) are left
    left = num_bins
    tail = np.concatenate(([0.0], np.cumsum(weights[::-1])))  # sums of the lightest
    while left > 1:
        rest = float(tail[n - lo] - tail[n - hi])
        fill = float(tail[n - hi + cap - 1] - tail[n - hi]) if cap > 1 else 0.0
        if weights[lo] + fill <= rest / left * (1 + _REL_EPS):
            break
        bin_id = num_bins - left
        bins[lo] = bin_id
        bins[hi - (cap - 1) : hi] = bin_id
        lo, hi, left = lo + 1, hi - (cap - 1), left - 1
    bins[lo:hi] = _differencing(weights[lo:hi], left) + (num_bins - left)
    return bins


def _differencing(weights: np.ndarray, num_bins: int) -> np.ndarray:
    """Balanced largest differencing (Karmarkar-Karp for bins of equal size).

    Items, heaviest first, form rounds of ``num_bins``: each round is a partial
    partition with one item per bin. The two partial partitions whose bins differ the
    most are merged, heaviest bin of one with the lightest of the other, until one is
    left; every bin then holds one item of every round. (Plain lists: the partitions
    are small, and numpy's per-call cost dominated here.)
    """
    w = weights.tolist()
    rounds = len(w) // num_bins
    heap: list[tuple[float, int, list[float], list[list[int]]]] = []
    for r in range(rounds):
        base = r * num_bins
        sums = w[base : base + num_bins]
        heap.append((sums[-1] - sums[0], r, sums, [[base + g] for g in range(num_bins)]))
    heapq.heapify(heap)
    tick = rounds
    order = range(num_bins)
    while len(heap) > 1:
        _, _, sums_a, members_a = heapq.heappop(heap)
        _, _, sums_b, members_b = heapq.heappop(heap)
        up = sorted(order, key=sums_a.__getitem__)
        down = sorted(order, key=sums_b.__getitem__, reverse=True)
        sums = [sums_a[i] + sums_b[j] for i, j in zip(up, down, strict=True)]
        members = [members_a[i] + members_b[j] for i, j in zip(up, down, strict=True)]
        heapq.heappush(heap, (min(sums) - max(sums), tick, sums, members))
        tick += 1
    bins = np.empty(len(w), dtype=np.int64)
    for b, items in enumerate(heap[0][3]):
        bins[items] = b
    return bins


def _repair(
    experts: np.ndarray,
    weights: np.ndarray,
    bins: np.ndarray,
    loads: np.ndarray,
    counts: np.ndarray,
    max_same: int,
) -> None:
    """Swap items until no bin holds more than ``max_same`` copies of one expert."""
    while True:
        over = np.argwhere(counts > max_same)
        if not len(over):
            return
        b, e = (int(x) for x in over[0])
        i = int(np.flatnonzero((bins == b) & (experts == e))[0])
        other = bins != b
        ok = other & (counts[bins, e] < max_same) & (counts[b, experts] < max_same) & (experts != e)
        candidates = np.flatnonzero(ok)
        if not len(candidates):  # pragma: no cover - excluded by the callers' checks
            raise RuntimeError(f"cannot spread the copies of expert {e} over distinct bins")
        delta = weights[i] - weights[candidates]
        score = np.maximum(loads[b] - delta, loads[bins[candidates]] + delta)
        j = int(candidates[int(np.argmin(score))])
        _swap(experts, weights, bins, loads, counts, i, j)


def _swap(
    experts: np.ndarray,
    weights: np.ndarray,
    bins: np.ndarray,
    loads: np.ndarray,
    counts: np.ndarray,
    i: int,
    j: int,
) -> None:
    bi, bj = int(bins[i]), int(bins[j])
    ei, ej = int(experts[i]), int(experts[j])
    delta = weights[i] - weights[j]
    loads[bi] -= delta
    loads[bj] += delta
    counts[bi, ei] -= 1
    counts[bj, ej] -= 1
    counts[bi, ej] += 1
    counts[bj, ei] += 1
    bins[i], bins[j] = bj, bi


def refine(
    experts: np.ndarray,
    weights: np.ndarray,
    bins: np.ndarray,
    loads: np.ndarray,
    counts: np.ndarray,
    max_same: int,
    eps: float,
    max_iter: int,
) -> None:
    """Best-improvement swaps out of the heaviest bin until none lowers it.

    Swaps of one item for one come first; when none helps, two items for two with one
    of the lightest bins (a few times at most: they cost more) before giving up. Stops
    early within ``GOOD_ENOUGH`` of the lower bound.
    """
    good = lower_bound(weights, len(loads)) * (1 + GOOD_ENOUGH)
    pair_tries = len(loads)
    for _ in range(max_iter):
        b = int(np.argmax(loads))
        if loads[b] <= good:
            return
        mine = np.flatnonzero(bins == b)
        ei = experts[mine][:, None]
        delta = weights[mine][:, None] - weights[None, :]
        partner_load = loads[bins][None, :]
        score = np.maximum(loads[b] - delta, partner_load + delta)
        ok = (
            (delta > eps)
            & (score < loads[b] - eps)
            & (bins != b)[None, :]
            & (counts[bins[None, :], ei] < max_same)
            & (counts[b, experts] < max_same)[None, :]
        )
        if not ok.any():
            pair_tries -= 1
            if pair_tries >= 0 and _pair_swap(
                experts, weights, bins, loads, counts, max_same, eps, b
            ):
                continue
            return
        flat = int(np.argmin(np.where(ok, score, np.inf)))
        row, j = divmod(flat, len(experts))
        _swap(experts, weights, bins, loads, counts, int(mine[row]), j)


def _pair_swap(
    experts: np.ndarray,
    weights: np.ndarray,
    bins: np.ndarray,
    loads: np.ndarray,
    counts: np.ndarray,
    max_same: int,
    eps: float,
    b: int,
) -> bool:
    """Apply the best exchange of two items of bin ``b`` for two of a light bin."""
    num_bins = len(loads)
    cap = len(experts) // num_bins
    if cap < 2 or num_bins < 2:
        return False
    grid = np.argsort(bins, kind="stable").reshape(num_bins, cap)  # items of each bin
    partners = np.argsort(loads, kind="stable")[: _PAIR_PARTNERS + 1]
    partners = partners[partners != b][:_PAIR_PARTNERS]
    first, second = np.triu_indices(cap, 1)
    out1, out2 = grid[b, first], grid[b, second]  # pairs leaving b: [pair]
    in1, in2 = grid[partners][:, first], grid[partners][:, second]  # [partner, pair]
    delta = (weights[out1] + weights[out2])[:, None, None] - (weights[in1] + weights[in2])
    score = np.maximum(loads[b] - delta, loads[partners][None, :, None] + delta)
    x1, x2 = experts[out1], experts[out2]
    y1, y2 = experts[in1], experts[in2]
    fits_there = (counts[partners][:, x1] < max_same) & (counts[partners][:, x2] < max_same)
    fits_here = (counts[b, y1] < max_same) & (counts[b, y2] < max_same) & (y1 != y2)
    ok = (
        (delta > eps)
        & (score < loads[b] - eps)
        & (fits_there.T & (x1 != x2)[:, None])[:, :, None]
        & fits_here[None, :, :]
    )
    if not ok.any():
        return False
    mine, c, theirs = np.unravel_index(int(np.argmin(np.where(ok, score, np.inf))), ok.shape)
    _swap(experts, weights, bins, loads, counts, int(out1[mine]), int(in1[c, theirs]))
    _swap(experts, weights, bins, loads, counts, int(out2[mine]), int(in2[c, theirs]))
    return True
