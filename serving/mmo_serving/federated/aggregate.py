"""Server-side checks and FedAvg of privatized updates (numpy only, no Flower).

The aggregator accepts from a site only arrays with exactly the names, shapes and dtypes
of the global head (anything else -- an extra array, another record -- is refused and
logged), averages the accepted updates with equal weights and adds the mean to the
global head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Shapes = Mapping[str, tuple[tuple[int, ...], str]]


def shapes_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(int(d) for d in v.shape), str(v.dtype)) for k, v in arrays.items()}


def update_problem(
    arrays: Mapping[str, np.ndarray], expected: Shapes, other_records: Sequence[str] = ()
) -> str | None:
    """Why a site's reply is refused, or None when it is exactly a head-shaped update."""
    if other_records:
        return (
            f"unexpected or missing content {sorted(other_records)}; a site sends only the "
            "record 'arrays' (its update) and 'metrics' with the single key 'weight'"
        )
    if sorted(arrays) != sorted(expected):
        return f"arrays {sorted(arrays)}, expected exactly {sorted(expected)}"
    got = shapes_of(arrays)
    for name, want in expected.items():
        if got[name] != want:
            return f"{name}: shape/dtype {got[name]}, expected {want}"
        if not np.all(np.isfinite(arrays[name])):
            return f"{name}: non-finite values"
    return None


def mean_update(
    global_head: Mapping[str, np.ndarray], updates: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``global + mean(updates)`` (equal weights), in the global head's dtypes."""
    if not updates:
        raise ValueError("no accepted update to aggregate")
    return {
        k: (g + np.mean([np.asarray(u[k], dtype=np.float64) for u in updates], axis=0)).astype(
            g.dtype
        )
        for k, g in global_head.items()
    }
