"""Resources an expert-parallel replica reserves (pure: no ray, no torch).

One placement-group bundle per GPU, packed on one node (``STRICT_PACK``). Rank ``i`` runs
in bundle ``i`` with one GPU and ``rank_cpus`` CPUs. Under Serve the replica actor is
scheduled into the same placement group: Ray Serve checks that its ``ray_actor_options``
fit in the first bundle, so bundle 0 also carries the replica's CPUs, and since the
replica asks for more CPU than any other bundle holds, it can only land in bundle 0.
The replica takes no GPU: rank 0's actor takes bundle 0's GPU.

The Serve app uses::

    @serve.deployment(
        ray_actor_options=replica_actor_options(),
        placement_group_bundles=placement_group_bundles(args.num_gpus),
        placement_group_strategy=PLACEMENT_STRATEGY,
    )
"""

from __future__ import annotations

PLACEMENT_STRATEGY = "STRICT_PACK"
DEFAULT_RANK_CPUS = 0.25
DEFAULT_REPLICA_CPUS = 0.5


def _check(num_gpus: int, rank_cpus: float, replica_cpus: float) -> None:
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise ValueError(f"num_gpus: expected an int >= 1, got {num_gpus!r}")
    if rank_cpus < 0 or replica_cpus < 0:
        raise ValueError(
            f"rank_cpus={rank_cpus}, replica_cpus={replica_cpus}: CPU counts must be >= 0"
        )


def rank_bundles(num_gpus: int, rank_cpus: float = DEFAULT_RANK_CPUS) -> list[dict[str, float]]:
    """Bundles for the ranks alone (the engine's own placement group outside Serve)."""
    _check(num_gpus, rank_cpus, 0.0)
    return [_bundle(1.0, rank_cpus) for _ in range(num_gpus)]


def placement_group_bundles(
    num_gpus: int,
    rank_cpus: float = DEFAULT_RANK_CPUS,
    replica_cpus: float = DEFAULT_REPLICA_CPUS,
) -> list[dict[str, float]]:
    """Bundles of a Serve replica's placement group: bundle 0 also holds the replica."""
    _check(num_gpus, rank_cpus, replica_cpus)
    bundles = rank_bundles(num_gpus, rank_cpus)
    bundles[0] = _bundle(1.0, rank_cpus + replica_cpus)
    return bundles


def replica_actor_options(replica_cpus: float = DEFAULT_REPLICA_CPUS) -> dict[str, float]:
    """``ray_actor_options`` of the replica that owns the engine (no GPU of its own)."""
    _check(1, 0.0, replica_cpus)
    return {"num_cpus": replica_cpus, "num_gpus": 0}


def _bundle(gpus: float, cpus: float) -> dict[str, float]:
    bundle = {"GPU": gpus}
    if cpus > 0:
        bundle["CPU"] = cpus
    return bundle
