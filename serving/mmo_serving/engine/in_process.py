"""``LocalEngine``: the model in this process, one rank, no Ray actor, no process group.

It runs the same ``RankWorker`` as each rank of ``ExpertParallelEngine`` with a world of
one, so the dispatcher still counts the load per (layer, expert) and plans with one GPU
can be applied. Work runs in a thread (``asyncio.to_thread``) so that an event loop
(a Serve replica) stays responsive; a lock keeps one batch at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mmo_serving.config import AppArgs, PlacementPlan
from mmo_serving.engine.rank import RankWorker
from mmo_serving.engine.routing import validate_plan
from mmo_serving.engine.runner import RunnerFactory
from mmo_serving.engine.types import (
    EmbeddingRequest,
    ExpertLoad,
    GenerationRequest,
    GenerationResult,
)


def build_expert_load(
    per_rank: list[tuple[list[list[int]], list[list[int]], int]], num_layers: int, num_experts: int
) -> ExpertLoad:
    """Assemble ``[layer][expert][rank]`` tables from each rank's ``counts()``."""
    ranks = range(len(per_rank))
    tokens = [
        [[per_rank[r][0][layer][e] for r in ranks] for e in range(num_experts)]
        for layer in range(num_layers)
    ]
    window = [
        [[per_rank[r][1][layer][e] for r in ranks] for e in range(num_experts)]
        for layer in range(num_layers)
    ]
    version = per_rank[0][2] if per_rank else 0
    return ExpertLoad(
        num_layers=num_layers,
        num_experts=num_experts,
        num_ranks=len(per_rank),
        tokens=tokens,
        window=window,
        plan_version=version,
    )


def default_runner_factory(args: AppArgs) -> RunnerFactory:
    """The runner of the model named by ``args`` (``mmo_serving.model``)."""
    from mmo_serving.engine.builtin_runner import ModelSource

    return ModelSource.from_args(args)


class LocalEngine:
    """Single-process engine (see module docstring)."""

    def __init__(
        self,
        args: AppArgs,
        runner_factory: RunnerFactory | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        if args.num_gpus != 1:
            raise ValueError(f"LocalEngine runs one rank; numGpus={args.num_gpus} (expected 1)")
        factory = runner_factory or default_runner_factory(args)
        self.worker = RankWorker(0, 1, factory, threads=threads)
        self.worker.setup(None, args.placement)
        self._lock = asyncio.Lock()

    async def _call(self, fn: Any, *a: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(fn, *a)

    async def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        return await self._call(self.worker.generate, list(items))

    async def embed(self, items: list[EmbeddingRequest]) -> list[list[float]]:
        return await self._call(self.worker.embed, list(items))

    async def expert_load(self) -> ExpertLoad:
        w = self.worker
        return build_expert_load([w.expert_counts()], w.num_layers, w.num_experts)

    async def update_plan(self, plan: PlacementPlan) -> None:
        w = self.worker
        validate_plan(plan, num_layers=w.num_layers, num_experts=w.num_experts, world=1)
        await self._call(w.update_plan, plan)

    async def check_health(self) -> None:
        """Nothing to check: the model lives in this process."""

    async def rank_info(self) -> list[dict[str, Any]]:
        return [self.worker.info()]

    async def close(self) -> None:
        self.worker.shutdown()
