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

    Round by round, the heaviest remaining items go to the lightest bins; conflicts
    (more than ``max_same`` copies of an expert in a bin) are repaired by swaps, then
    swaps that lower the heaviest bin are applied until none helps. Returns the bin of
    each item.
    """
    n = len(experts)
    if n % num_bins:
        raise ValueError(f"{n} items do not split evenly over {num_bins} bins")
    bins = np.empty(n, dtype=np.int64)
    loads = np.zeros(num_bins)
    for start in range(0, n, num_bins):
        lightest = np.argsort(loads, kind="stable")
        bins[start : start + num_bins] = lightest
        loads[lightest] += weights[start : start + num_bins]
    counts = _counts(experts, bins, num_bins, num_experts)
    eps = _REL_EPS * float(weights.sum())
    _repair(experts, weights, bins, loads, counts, max_same)
    refine(experts, weights, bins, loads, counts, max_same, eps, max_iter or 4 * n)
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
    """Best-improvement swaps out of the heaviest bin until none lowers it."""
    for _ in range(max_iter):
        b = int(np.argmax(loads))
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
            return
        flat = int(np.argmin(np.where(ok, score, np.inf)))
        row, j = divmod(flat, len(experts))
        _swap(experts, weights, bins, loads, counts, int(mine[row]), j)
