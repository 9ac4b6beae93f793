"""Secure aggregation (Flower SecAgg+) parameters: derived from the spec, and checked (pure).

With ``spec.isolation.federated.secureAggregation: true`` every round samples exactly
``minClients`` sites (``n``). Each site clips and noises its update (:mod:`.dp`),
quantizes it and adds masks that cancel only in the sum, so the aggregator learns the
mean and nothing else. :func:`derive` turns the spec into the protocol's parameters:

``num_shares`` (k)
    each site's mask seed and key are split into k Shamir shares, one per neighbour
    (itself included). ``k = n`` up to :data:`FULL_GRAPH_SITES` sites (classic SecAgg:
    every site is every site's neighbour); above, SecAgg+'s sparse graph with the odd
    k >= 3 log2(n) (the paper's O(log n)), so a round costs O(n log n) instead of O(n^2).
``reconstruction_threshold`` (t)
    the shares needed to rebuild a secret: ``max(3, ceil(2k/3))``. The aggregator plus
    t - 1 colluding sites learn nothing (t >= 3: no colluding pair suffices); t > k/2
    keeps an aggregator that lies about who dropped from rebuilding both a site's mask
    seed and its key; k - t neighbours may drop after the keys were shared (1 of 4).
``clipping_range`` (c)
    the quantizer's range [-c, c] per coordinate: ``clipNorm + 6 sigma`` where sigma is a
    site's noise std. A clipped update has no coordinate above clipNorm, so only noise
    beyond six sigma (probability 2e-9 per coordinate) is clipped again, on the site.
``quantization_range`` (Q) and ``modulus_range`` (M)
    coordinates become integers in [0, Q]; ``M = 2**32`` (Flower's maximum) and Q the
    largest power of two up to 2**22 with ``n * Q < M``, so the sum of n never wraps.
    The mean is exact up to ``2c / Q`` per coordinate (stochastic rounding).
``max_weight``
    1: every site sends weight 1 (equal weights; the reply does not reveal data size).

Distributed DP: the aggregator only sees sums of at least n updates, so a site adds
noise of std ``noiseMultiplier * clipNorm / sqrt(n)`` and the sum carries the full
``noiseMultiplier * clipNorm``. A round whose sum would hold fewer than n updates fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MIN_SITES = 4
FULL_GRAPH_SITES = 15
MODULUS_RANGE = 2**32
MAX_QUANTIZATION_RANGE = 2**22
MIN_QUANTIZATION_RANGE = 2**16
NOISE_SIGMAS = 6.0


# Fault injection for the local federation (``--drop SITE:ROUND:WHEN``): the SecAgg+
# stage at which a site fails instead of answering.
DROP_POINTS = {"before-masking": "collect_masked_vectors", "before-unmask": "unmask"}


@dataclass(frozen=True)
class SecAggParams:
    """The SecAgg+ parameters of a federation of ``sites`` sites per round."""

    sites: int
    num_shares: int
    reconstruction_threshold: int
    clipping_range: float
    quantization_range: int
    modulus_range: int = MODULUS_RANGE
    max_weight: float = 1.0

    @property
    def dropouts_tolerated(self) -> int:
        """Neighbours that may drop after the keys were shared."""
        return self.num_shares - self.reconstruction_threshold

    @property
    def quantization_error(self) -> float:
        """Bound of the error of the mean, per coordinate."""
        return 2 * self.clipping_range / self.quantization_range


def site_noise_std(clip_norm: float, noise_multiplier: float, sites: int) -> float:
    return noise_multiplier * clip_norm / math.sqrt(sites)


def derive(sites: int, clip_norm: float, noise_multiplier: float) -> SecAggParams:
    """The protocol's parameters for ``sites`` (= minClients) sites per round."""
    if sites <= FULL_GRAPH_SITES:
        shares = sites
    else:
        shares = max(FULL_GRAPH_SITES, math.ceil(3 * math.log2(sites)))
        shares += 1 - shares % 2  # odd: a site and (k - 1) / 2 neighbours on each side
        shares = min(shares, sites)
    threshold = max(3, math.ceil(2 * shares / 3))
    q = MAX_QUANTIZATION_RANGE
    while q > 1 and sites * q >= MODULUS_RANGE:
        q //= 2
    c = clip_norm + NOISE_SIGMAS * site_noise_std(clip_norm, noise_multiplier, sites)
    return SecAggParams(sites, shares, threshold, c, q)


def problems(p: SecAggParams) -> list[str]:
    """Why these parameters make SecAgg+ insecure or impossible (empty: fine)."""
    out = []
    n, k, t = p.sites, p.num_shares, p.reconstruction_threshold
    if n < MIN_SITES:  # the other problems follow from this one
        return [
            f"{n} sites per round; secure aggregation needs at least {MIN_SITES}: with 3, a "
            "reconstruction threshold of 3 tolerates no dropout and any lower one lets the "
            "aggregator and a colluding pair of sites unmask the third"
        ]
    if k > n:
        out.append(
            f"{k} shares but only {n} sites per round: every share must go to a different "
            "site, so there must be at least as many sites as shares"
        )
    if k < 3:
        out.append(f"{k} shares; SecAgg+ needs at least 3")
    if t <= 2:
        out.append(
            f"reconstruction threshold {t}: the aggregator and a colluding pair of sites "
            "would hold enough shares to rebuild a site's masks and see its update; use >= 3"
        )
    if 2 * t <= k:
        out.append(
            f"reconstruction threshold {t} is not above half of the {k} shares: an aggregator "
            "that tells different sites different dropout lists could rebuild both a site's "
            "mask seed and its key, and unmask its update"
        )
    if t >= k:
        out.append(
            f"reconstruction threshold {t} with {k} shares: it must be below the shares, or "
            "no site may ever drop (Flower refuses it)"
        )
    if not p.clipping_range > 0:
        out.append(f"clipping range {p.clipping_range}: must be > 0")
    if p.modulus_range > MODULUS_RANGE or p.modulus_range & (p.modulus_range - 1):
        out.append(f"modulus range {p.modulus_range}: must be a power of two <= 2**32")
    if n * p.quantization_range >= p.modulus_range:
        out.append(
            f"{n} sites x quantization range {p.quantization_range} >= modulus range "
            f"{p.modulus_range}: the masked sum would wrap around and the mean be garbage"
        )
    if p.quantization_range < MIN_QUANTIZATION_RANGE:
        out.append(
            f"quantization range {p.quantization_range} < {MIN_QUANTIZATION_RANGE}: the "
            "rounding error would rival the updates (too many sites for a 32-bit modulus)"
        )
    if p.max_weight != 1.0:
        out.append(f"max weight {p.max_weight}: every site sends weight 1, so it must be 1")
    return out


def from_setup(setup: Mapping[str, Any]) -> SecAggParams:
    """The parameters a SecAgg+ ``setup`` message carries (Flower's key names)."""
    return SecAggParams(
        sites=int(setup["sample_num"]),
        num_shares=int(setup["share_num"]),
        reconstruction_threshold=int(setup["threshold"]),
        clipping_range=float(setup["clipping_range"]),
        quantization_range=int(setup["target_range"]),
        modulus_range=int(setup["mod_range"]),
        max_weight=float(setup.get("max_weight", 1.0)),
    )


def site_refusal(
    required_sites: int,
    stage: str | None,
    configs: Mapping[str, Any],
    state: Mapping[str, Any],
) -> str | None:
    """Why a site that vouches for secure aggregation over ``required_sites`` sites (its
    noise is divided by their square root) must not answer this training message, or None.

    ``stage`` is the message's SecAgg+ stage (None: a plain training message, which would
    send the update unmasked), ``configs`` its SecAgg+ record, ``state`` what the site
    kept from the round's setup (``sample_num``, ``share_num``).
    """
    if required_sites <= 0:
        return None
    if stage is None:
        return (
            "this site requires secure aggregation (its noise assumes the aggregator sees "
            "only sums), but the aggregator asked for a plain, unmasked update"
        )
    if stage == "setup":
        got = from_setup(configs)
        if got.sites < required_sites:
            return (
                f"the aggregator samples {got.sites} sites, fewer than the {required_sites} "
                "this site's noise level assumes"
            )
        bad = problems(got)
        return "insecure SecAgg+ parameters from the aggregator: " + "; ".join(bad) if bad else None
    full_graph = int(state.get("share_num", 0)) >= int(state.get("sample_num", 1))
    active = len(configs.get("active_nids", []))
    if stage == "unmask" and full_graph and active < required_sites:
        return (
            f"only {active} sites' masked updates are in the sum, fewer than the "
            f"{required_sites} this site's noise level assumes: it will not help unmask it"
        )
    return None
