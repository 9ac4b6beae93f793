"""Low-churn re-planning of one layer: improve the current assignment with few moves.

Starting from the slots the engine already holds, apply one action at a time on the
heaviest GPU until its load is within the target:

- *swap* two copies of different experts between that GPU and another one (two
  experts land on a GPU that did not hold them);
- *transfer* a copy: a slot holding a copy of an expert that has several becomes a
  copy of an expert on the heaviest GPU (replica counts are re-decided only where this
  pays; one expert lands on a new GPU).

An action is kept only when it lowers the heaviest GPU without pushing any GPU it
touches to that load. Among the actions that bring the heaviest GPU under the target,
the one that moves the fewest experts wins; when none does, the one with the largest
gain per moved expert. A move is an (expert, GPU) pair held now that the original plan
did not hold; an action that puts an expert back where it was gives a move back.
"""

from __future__ import annotations

import numpy as np

_REL_EPS = 1e-9


def low_churn(
    load: np.ndarray,
    slots: np.ndarray,
    *,
    num_gpus: int,
    slots_per_gpu: int,
    target: float,
    budget: int,
    original: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Improve ``slots`` (physical slot -> expert, no empty slot) for ``load``.

    ``target`` is the balancedness (max/mean GPU load) at which to stop, ``budget`` the
    most moves allowed, ``original[g, e]`` whether GPU ``g`` held expert ``e`` before.
    Returns the new slots and the number of moves.
    """
    slots = slots.copy()
    num_experts = len(load)
    gpu_of = np.arange(num_gpus * slots_per_gpu) // slots_per_gpu
    total = float(load.sum())
    present = np.zeros((num_gpus, num_experts), dtype=bool)
    present[gpu_of, slots] = True
    fresh = (~original).astype(np.int64)  # 1 where holding the expert counts as a move
    moved = int((present & ~original).sum())
    if total <= 0:
        return slots, moved
    eps = _REL_EPS * total
    limit = target * total / num_gpus + eps
    copies = np.bincount(slots, minlength=num_experts)
    for _ in range(8 * len(slots)):
        weight = (load / copies)[slots]
        gpu_load = np.bincount(gpu_of, weights=weight, minlength=num_gpus)
        b = int(np.argmax(gpu_load))
        top = float(gpu_load[b])
        if top <= limit or moved >= budget:
            break
        options = [_swaps(b, top, slots, weight, gpu_load, gpu_of, present, fresh, eps)]
        if copies.max() > 1:
            options.append(
                _transfers(b, top, load, slots, copies, gpu_load, gpu_of, present, fresh, eps)
            )
        choice = _choose(options, top, limit, budget - moved)
        if choice is None:
            break
        kind, i, j, cost = choice
        moved += cost
        if kind == "swap":
            ei, ej = int(slots[i]), int(slots[j])
            gi, gj = int(gpu_of[i]), int(gpu_of[j])
            present[gi, ei] = present[gj, ej] = False
            present[gi, ej] = present[gj, ei] = True
            slots[i], slots[j] = ej, ei
        else:  # transfer: slot i now holds expert j
            a, gi = int(slots[i]), int(gpu_of[i])
            present[gi, a] = False
            present[gi, j] = True
            copies[a] -= 1
            copies[j] += 1
            slots[i] = j
    return slots, moved


_Options = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _swaps(
    b: int,
    top: float,
    slots: np.ndarray,
    weight: np.ndarray,
    gpu_load: np.ndarray,
    gpu_of: np.ndarray,
    present: np.ndarray,
    fresh: np.ndarray,
    eps: float,
) -> _Options:
    """Every swap of a slot on GPU ``b`` with a slot elsewhere: (score, cost, ok)."""
    spg = int(np.sum(gpu_of == b))
    mine = np.arange(b * spg, (b + 1) * spg)
    em = slots[mine][:, None]
    ej = slots[None, :]
    gj = gpu_of[None, :]
    delta = weight[mine][:, None] - weight[None, :]
    score = np.maximum(top - delta, gpu_load[gj] + delta)
    cost = fresh[gj, em] + fresh[b, ej] - fresh[b, em] - fresh[gj, ej]
    ok = (delta > eps) & (score < top - eps) & (gj != b) & ~present[gj, em] & ~present[b, ej]
    rows = np.broadcast_to(mine[:, None], ok.shape)
    cols = np.broadcast_to(np.arange(len(slots))[None, :], ok.shape)
    return "swap", rows, cols, score, cost, ok


def _transfers(
    b: int,
    top: float,
    load: np.ndarray,
    slots: np.ndarray,
    copies: np.ndarray,
    gpu_load: np.ndarray,
    gpu_of: np.ndarray,
    present: np.ndarray,
    fresh: np.ndarray,
    eps: float,
) -> _Options:
    """Every re-assignment of a spare copy (slot i) to an expert h on GPU ``b``."""
    num_gpus = len(gpu_load)
    hot = np.unique(slots[gpu_of == b])
    hot = hot[(copies[hot] < num_gpus) & (load[hot] > 0)]
    donors = np.flatnonzero(copies[slots] >= 2)
    if not len(hot) or not len(donors):
        empty = np.zeros((0, 0))
        return "transfer", empty, empty, empty, empty, empty.astype(bool)
    a = slots[donors]
    gi = gpu_of[donors]
    rh, lh = copies[hot], load[hot]
    ra, la = copies[a], load[a]
    relief = lh / rh - lh / (rh + 1)  # on every GPU holding h
    burden = la / (ra - 1) - la / ra  # on every GPU still holding a
    holds_h = present[:, hot].T[:, None, :]
    holds_a = present[:, a].T[None, :, :]
    new = gpu_load - relief[:, None, None] * holds_h + burden[None, :, None] * holds_a
    cols = np.arange(len(donors))
    # On GPU gi the copy of a leaves (it took la/ra, not burden) and h arrives.
    new[:, cols, gi] += (lh / (rh + 1))[:, None] - (la / ra + burden)[None, :]
    touched = holds_h | holds_a
    touched = touched | (np.arange(num_gpus)[None, None, :] == gi[None, :, None])
    score = np.where(touched, new, -np.inf).max(axis=2)
    ok = (hot[:, None] != a[None, :]) & ~present[gi[None, :], hot[:, None]] & (score < top - eps)
    cost = fresh[gi[None, :], hot[:, None]] - fresh[gi, a][None, :]
    rows = np.broadcast_to(donors[None, :], ok.shape)
    experts = np.broadcast_to(hot[:, None], ok.shape)
    return "transfer", rows, experts, score, cost, ok


def _choose(
    options: list[_Options], top: float, limit: float, room: int
) -> tuple[str, int, int, int] | None:
    """Cheapest action that reaches the limit, else the best gain per move."""
    best_key: tuple[float, float] | None = None
    best: tuple[str, int, int, int] | None = None
    for kind, rows, cols, score, cost, ok in options:
        ok = ok & (cost <= room)
        if not ok.any():
            continue
        reach = ok & (score <= limit)
        if reach.any():
            # primary: fewest moves; secondary: lowest resulting load
            key_arr = np.where(reach, cost * 1e6 + score / top, np.inf)
            flat = int(np.argmin(key_arr))
            key = (0.0, float(key_arr.flat[flat]))
        else:
            gain = (top - score) / np.maximum(cost, 0.5)
            key_arr = np.where(ok, -gain, np.inf)
            flat = int(np.argmin(key_arr))
            key = (1.0, float(key_arr.flat[flat]))
        if best_key is None or key < best_key:
            best_key = key
            best = (kind, int(rows.flat[flat]), int(cols.flat[flat]), int(cost.flat[flat]))
    return best
