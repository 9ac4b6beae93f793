"""``ExpertParallelEngine``: N rank actors, one per GPU, one ``torch.distributed`` group.

Resources. The ranks run in a ``STRICT_PACK`` placement group with one bundle per GPU
(``resources.placement_group_bundles``): rank ``i`` in bundle ``i`` with one GPU. Inside
a Serve replica deployed with ``placement_group_bundles`` the engine uses the replica's
own placement group (``get_current_placement_group()``; the replica sits in bundle 0
without a GPU); anywhere else (a plain driver, a test) it creates one and removes it on
``close()``.

Group. Rank 0 opens a TCP store on a free port of its node; every rank joins the group
with it: ``nccl`` when the rank sees a CUDA device, ``gloo`` otherwise. With one rank
there is no group at all.

Weights. Every rank loads the whole checkpoint from the model source on the CPU, keeps
the dense weights (replicated, checked equal across ranks by checksum) and only the
experts the plan gives it (redundant copies included), frees the others, then moves
to its device.

Batches. A batch of requests is split round-robin over the ranks (request ``i`` to rank
``i % N``): each rank runs the dense layers (encoder, attention, KV cache, sampling) for
its own shard only, and at every MoE layer sends each (token, expert) pair to a rank
holding that expert with ``all_to_all`` (counts first, then payloads), gets the expert
outputs back with ``all_to_all`` and combines them with the router weights. Ranks stay
in lock step at the granularity of MoE-layer rounds: a rank whose shard needs fewer
decode steps (or is empty) keeps answering rounds until all are done (see
``dispatch``), so every rank runs the same number of collective rounds per batch.
Batches are serialised by a lock: the ranks see the same sequence of calls.

Plans. ``update_plan`` applies a new placement plan to the running ranks (same actors,
same processes, same group): each rank receives the expert weights it newly needs from
a rank that holds them now (``all_to_all``), keeps the ones it already had, and drops
the rest. Nothing is reloaded from the checkpoint.

Load. Each rank counts the (token, expert) rows it computes per (layer, expert);
``expert_load()`` assembles them per (layer, expert, rank) with the per-layer
balancedness (max/mean per-rank load since the plan in force was applied).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import ray
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mmo_serving.config import AppArgs, PlacementPlan
from mmo_serving.engine.in_process import LocalEngine, build_expert_load, default_runner_factory
from mmo_serving.engine.rank import RankWorker
from mmo_serving.engine.resources import DEFAULT_RANK_CPUS, PLACEMENT_STRATEGY, rank_bundles
from mmo_serving.engine.routing import validate_plan
from mmo_serving.engine.runner import RunnerFactory
from mmo_serving.engine.types import (
    EmbeddingRequest,
    ExpertLoad,
    GenerationRequest,
    GenerationResult,
)

log = logging.getLogger(__name__)

_STATS = "stats"


class _RankActor(RankWorker):
    """``RankWorker`` as a Ray actor. Reports (``info``, ``expert_counts``) are called in
    their own concurrency group, so that they do not wait behind a batch."""

    def open_store(self, host: str | None = None) -> tuple[str, int]:
        return super().open_store(host or ray.util.get_node_ip_address())

    def info(self) -> dict[str, Any]:
        out = super().info()
        ctx = ray.get_runtime_context()
        out.update(
            gpuIds=[str(g) for g in ray.get_gpu_ids()],
            acceleratorIds=list(ctx.get_accelerator_ids().get("GPU", [])),
            actorId=ctx.get_actor_id(),
            nodeId=ctx.get_node_id(),
            placementGroupId=ctx.get_placement_group_id(),
        )
        return out


RankActor = ray.remote(concurrency_groups={_STATS: 1})(_RankActor)  # type: ignore[call-overload]


def _gpu_bundles(pg: PlacementGroup) -> list[int]:
    return [i for i, b in enumerate(pg.bundle_specs) if b.get("GPU", 0) >= 1]


class ExpertParallelEngine:
    """Expert-parallel engine over ``args.num_gpus`` rank actors (module docstring)."""

    def __init__(
        self,
        args: AppArgs,
        runner_factory: RunnerFactory | None = None,
        *,
        rank_cpus: float = DEFAULT_RANK_CPUS,
        threads: int | None = 1,
        use_cuda: bool = True,
        timeout_s: float = 600.0,
    ) -> None:
        self.args = args
        self.world = args.num_gpus
        self.plan: PlacementPlan | None = args.placement
        self.plans_applied = 0
        factory = runner_factory or default_runner_factory(args)
        self._pg, self._own_pg, bundles = self._reserve(rank_cpus)
        self.placement_group_id = self._pg.id.hex()
        self.ranks = [
            RankActor.options(
                num_cpus=rank_cpus,
                num_gpus=1,
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._pg,
                    placement_group_bundle_index=bundles[rank],
                    placement_group_capture_child_tasks=False,
                ),
            ).remote(
                rank, self.world, factory, threads=threads, use_cuda=use_cuda, timeout_s=timeout_s
            )
            for rank in range(self.world)
        ]
        store = self.ranks[0].open_store.remote() if self.world > 1 else None
        self._setup = [r.setup.remote(store, args.placement) for r in self.ranks]
        self._infos: list[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def _reserve(self, rank_cpus: float) -> tuple[PlacementGroup, bool, list[int]]:
        current = get_current_placement_group()
        if current is not None:
            gpus = _gpu_bundles(current)
            if len(gpus) >= self.world:
                return current, False, gpus[: self.world]
            log.warning(
                "current placement group has %d GPU bundles, %d needed: reserving a new one",
                len(gpus),
                self.world,
            )
        pg = placement_group(rank_bundles(self.world, rank_cpus), strategy=PLACEMENT_STRATEGY)
        return pg, True, list(range(self.world))

    # -- readiness ------------------------------------------------------------------
    def _check(self, infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sums = [i["denseChecksum"] for i in infos]
        ref = sums[0]
        for i, s in zip(infos, sums, strict=True):
            if not math.isclose(s, ref, rel_tol=1e-9, abs_tol=1e-9):
                raise RuntimeError(
                    f"rank {i['rank']} loaded different dense weights (checksum {s} vs {ref}): "
                    "the model factory must build the same weights on every rank"
                )
        self._infos = infos
        return infos

    def wait_ready(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Block until every rank is set up; returns their ``info()``."""
        if self._infos is None:
            self._check(ray.get(self._setup, timeout=timeout_s))
        assert self._infos is not None
        return self._infos

    async def ready(self) -> list[dict[str, Any]]:
        if self._infos is None:
            self._check(list(await asyncio.gather(*self._setup)))
        assert self._infos is not None
        return self._infos

    def _shards(self, items: list[Any]) -> list[list[Any]]:
        return [items[r :: self.world] for r in range(self.world)]

    def _merge(self, parts: list[list[Any]], n: int) -> list[Any]:
        out: list[Any] = [None] * n
        for rank, part in enumerate(parts):
            for j, value in enumerate(part):
                out[rank + j * self.world] = value
        return out

    async def _scatter(self, method: str, items: list[Any]) -> list[Any]:
        if self._closed:
            raise RuntimeError("engine is closed")
        await self.ready()
        if not items:
            return []
        shards = self._shards(items)
        async with self._lock:
            refs = [getattr(r, method).remote(s) for r, s in zip(self.ranks, shards, strict=True)]
            parts = await asyncio.gather(*refs)
        return self._merge(list(parts), len(items))

    # -- Engine protocol --------------------------------------------------------------
    async def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        return await self._scatter("generate", list(items))

    async def embed(self, items: list[EmbeddingRequest]) -> list[list[float]]:
        return await self._scatter("embed", list(items))

    async def expert_load(self) -> ExpertLoad:
        infos = await self.ready()
        counts = await self._report("expert_counts")
        return build_expert_load(list(counts), infos[0]["numLayers"], infos[0]["numExperts"])

    async def update_plan(self, plan: PlacementPlan) -> None:
        """Apply ``plan`` to the running ranks (no restart); ValueError if it does not fit."""
        infos = await self.ready()
        validate_plan(
            plan,
            num_layers=infos[0]["numLayers"],
            num_experts=infos[0]["numExperts"],
            world=self.world,
        )
        async with self._lock:
            await asyncio.gather(*[r.update_plan.remote(plan) for r in self.ranks])
        self.plan = plan
        self.plans_applied += 1

    async def _report(self, method: str) -> list[Any]:
        """Call a report method of every rank in the reports' concurrency group."""
        calls = [getattr(r, method).options(concurrency_group=_STATS) for r in self.ranks]
        return list(await asyncio.gather(*[c.remote() for c in calls]))

    async def check_health(self, timeout_s: float = 30.0) -> None:
        """Raise if a rank is dead or does not answer (Serve's ``check_health`` can call
        this, so that a replica with a lost rank is replaced with fresh ranks)."""
        if self._closed:
            raise RuntimeError("engine is closed")
        await asyncio.wait_for(self._report("info"), timeout=timeout_s)

    async def rank_info(self) -> list[dict[str, Any]]:
        await self.ready()
        return await self._report("info")

    async def expert_checksums(self) -> list[list[dict[int, float]]]:
        """Per rank, per layer: expert -> sum of the ``w_in`` it holds (for checks)."""
        await self.ready()
        async with self._lock:
            return list(await asyncio.gather(*[r.expert_checksums.remote() for r in self.ranks]))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            done, _ = await asyncio.wait(
                [asyncio.ensure_future(r.shutdown.remote()) for r in self.ranks], timeout=30
            )
            for fut in done:
                fut.exception()
        finally:
            for r in self.ranks:
                ray.kill(r)
            if self._own_pg:
                remove_placement_group(self._pg)


def make_engine(
    args: AppArgs, runner_factory: RunnerFactory | None = None, *, local: bool | None = None
) -> LocalEngine | ExpertParallelEngine:
    """``LocalEngine`` when asked (default: one GPU and no Ray), else expert-parallel."""
    if local is None:
        local = args.num_gpus == 1 and not ray.is_initialized()
    if local:
        return LocalEngine(args, runner_factory)
    return ExpertParallelEngine(args, runner_factory)
