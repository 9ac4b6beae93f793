"""The Serve deployment options of the front, from AppArgs (pure: no ray).

:func:`deployment_options` is the one place they are computed: ``mmo up`` (through
``build_app``) and the operator's RayService builder both call it. Overrides come first,
defaults fill what they leave out (the shape of Ray Serve LLM's
``get_deployment_options``).

Resources:

- one GPU: the replica actor itself holds the GPU (``ray_actor_options.num_gpus: 1``),
  since the engine runs inside it; Ray shows a process only the GPUs it was given.
- more: a placement group with one GPU bundle per expert-parallel rank
  (:mod:`mmo_serving.engine.resources`); the replica takes no GPU, each rank takes one.

- engine ``vllm``: the front takes no GPU; the Ray Serve LLM deployment behind it
  reserves its own (Ray Serve LLM computes that deployment's options).

``accelerator`` (the Ray custom resource a cluster's GPU nodes advertise, e.g.
``accelerator_type:A100``) pins the replica, or every bundle, to nodes of that type;
``nodes_per_replica > 1`` relaxes STRICT_PACK to PACK.
"""

from __future__ import annotations

from typing import Any

from mmo_serving.config import AppArgs, RuntimeConfig
from mmo_serving.engine.resources import (
    DEFAULT_RANK_CPUS,
    DEFAULT_REPLICA_CPUS,
    PLACEMENT_STRATEGY,
    placement_group_bundles,
    replica_actor_options,
)

INGRESS_DEPLOYMENT = "mmo-ingress"
HEALTH_CHECK_PERIOD_S = 10


def _resources(args: AppArgs, accelerator: str | None, nodes_per_replica: int) -> dict[str, Any]:
    if args.engine == "vllm":  # the engine is its own deployment, with its own GPUs
        return {"ray_actor_options": {"num_cpus": DEFAULT_REPLICA_CPUS}}
    if args.num_gpus == 1:
        actor: dict[str, Any] = {"num_cpus": DEFAULT_REPLICA_CPUS + DEFAULT_RANK_CPUS}
        actor["num_gpus"] = 1
        if accelerator:
            actor["resources"] = {accelerator: 1.0}
        return {"ray_actor_options": actor}
    bundles: list[dict[str, float]] = placement_group_bundles(args.num_gpus)
    if accelerator:
        bundles = [{**b, accelerator: 1.0} for b in bundles]
    return {
        "ray_actor_options": dict(replica_actor_options()),
        "placement_group_bundles": bundles,
        "placement_group_strategy": PLACEMENT_STRATEGY if nodes_per_replica == 1 else "PACK",
    }


def deployment_options(
    args: AppArgs,
    *,
    accelerator: str | None = None,
    nodes_per_replica: int = 1,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Options for ``Deployment.options(...)`` and ``serveConfigV2`` ``deployments[]``.

    ``user_config`` is the :class:`RuntimeConfig` (batching and the placement plan) that
    the front applies without a restart; ``autoscaling_config`` and
    ``max_ongoing_requests`` are Serve's lightweight updates.
    """
    auto = args.autoscaling
    runtime = RuntimeConfig(batching=args.batching, placement=args.placement)
    defaults: dict[str, Any] = {
        "name": INGRESS_DEPLOYMENT,
        "max_ongoing_requests": auto.max_ongoing_requests,
        "autoscaling_config": auto.serve_autoscaling_config(),
        "user_config": runtime.model_dump(mode="json", by_alias=True, exclude_none=True),
        **_resources(args, accelerator, nodes_per_replica),
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
    }
    options = dict(overrides or {})
    for key, value in defaults.items():
        options.setdefault(key, value)
    return options
