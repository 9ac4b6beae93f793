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


# kind, first index, second index, resulting load, moves: one entry per valid action
_Options = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


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
    """Every useful swap of a slot on GPU ``b`` with a slot on a lighter GPU."""
    spg = len(slots) // len(gpu_load)
    mine = np.arange(b * spg, (b + 1) * spg)
    theirs = np.flatnonzero(gpu_load[gpu_of] < top - eps)
    delta = weight[mine][:, None] - weight[theirs][None, :]
    score = np.maximum(top - delta, gpu_load[gpu_of[theirs]][None, :] + delta)
    r, c = np.nonzero((delta > eps) & (score < top - eps))
    i, j = mine[r], theirs[c]
    ei, ej, gj = slots[i], slots[j], gpu_of[j]
    valid = ~present[gj, ei] & ~present[b, ej]
    i, j, ei, ej, gj = i[valid], j[valid], ei[valid], ej[valid], gj[valid]
    cost = fresh[gj, ei] + fresh[b, ej] - fresh[b, ei] - fresh[gj, ej]
    return "swap", i, j, score[r, c][valid], cost


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
    """Every useful re-assignment of a spare copy (slot i) to an expert h on GPU ``b``."""
    num_gpus = len(gpu_load)
    hot = np.unique(slots[gpu_of == b])
    hot = hot[(copies[hot] < num_gpus) & (load[hot] > 0)]
    donors = np.flatnonzero(copies[slots] >= 2)
    if not len(hot) or not len(donors):
        none = np.zeros(0, dtype=np.int64)
        return "transfer", none, none, none.astype(float), none
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
    r, c = np.nonzero(ok)
    cost = fresh[gi[c], hot[r]] - fresh[gi[c], a[c]]
    return "transfer", donors[c], hot[r], score[r, c], cost


def _choose(
    options: list[_Options], top: float, limit: float, room: int
) -> tuple[str, int, int, int] | None:
    """Cheapest action that reaches the limit, else the best gain per move."""
    best_key: tuple[float, float] | None = None
    best: tuple[str, int, int, int] | None = None
    for kind, first, second, score, cost in options:
        ok = cost <= room
        if not ok.any():
            continue
        reach = ok & (score <= limit)
        if reach.any():
            # primary: fewest moves; secondary: lowest resulting load
            key_arr = np.where(reach, cost * 1e6 + score / top, np.inf)
            rank = 0.0
        else:
            key_arr = np.where(ok, -(top - score) / np.maximum(cost, 0.5), np.inf)
            rank = 1.0
        k = int(np.argmin(key_arr))
        key = (rank, float(key_arr[k]))
        if best_key is None or key < best_key:
            best_key = key
            best = (kind, int(first[k]), int(second[k]), int(cost[k]))
    return best
