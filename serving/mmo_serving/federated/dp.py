"""Differential privacy of a site's update before it leaves (numpy only).

A federated site sends ``update = local_weights - global_weights`` for the small part of
the model it fine-tunes. Before sending, :func:`privatize`:

1. clips the update's global L2 norm (all arrays together) to ``clip_norm``: one
   site's influence on the aggregate is then bounded by ``clip_norm`` whatever its data;
2. adds Gaussian noise of standard deviation ``noise_multiplier * clip_norm /
   sqrt(shares)`` to every coordinate. ``shares=1`` makes each update private on its
   own; with secure aggregation the server only sees the sum of ``shares`` updates, so
   each site may add 1/sqrt(shares) of the noise and the sum still carries the full
   ``noise_multiplier * clip_norm`` (distributed DP).

The admission bounds of ``spec.isolation.federated.differentialPrivacy`` are in
:mod:`mmo_operator.policy.admission`. This module is the part of the Flower ClientApp
that does not depend on Flower.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Privatized:
    arrays: list[np.ndarray]
    norm_before: float  # L2 norm of the raw update
    scale: float  # factor applied by clipping (1.0: not clipped)
    noise_std: float


def global_norm(arrays: Sequence[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def clip(arrays: Sequence[np.ndarray], clip_norm: float) -> tuple[list[np.ndarray], float, float]:
    """Scale ``arrays`` so that their global L2 norm is at most ``clip_norm``."""
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    norm = global_norm(arrays)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [np.asarray(a, dtype=np.float64) * scale for a in arrays], norm, scale


def privatize(
    arrays: Sequence[np.ndarray],
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    shares: int = 1,
) -> Privatized:
    """Clipped and noised copy of an update (the only thing a site may send)."""
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if shares < 1:
        raise ValueError(f"shares must be >= 1, got {shares}")
    clipped, norm, scale = clip(arrays, clip_norm)
    std = noise_multiplier * clip_norm / math.sqrt(shares)
    noised = [
        (c + rng.normal(0.0, std, size=c.shape)).astype(np.asarray(a).dtype, copy=False)
        if std > 0
        else c.astype(np.asarray(a).dtype, copy=False)
        for c, a in zip(clipped, arrays, strict=True)
    ]
    return Privatized(noised, norm, scale, std)
