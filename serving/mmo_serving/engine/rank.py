"""One expert-parallel rank: the model, its share of the experts, and the dispatcher.

``RankWorker`` is plain Python (no ray): ``LocalEngine`` runs one in-process, and
``ExpertParallelEngine`` wraps it in a Ray actor (one per GPU bundle). Life cycle:

1. ``__init__`` builds the model on the CPU with the runner factory (every rank loads
   the full checkpoint from the same source);
2. rank 0 ``open_store()`` opens the rendezvous TCP store on its node (free port);
3. ``setup(store, plan)`` joins the ``torch.distributed`` group (more than one rank
   only), drops the experts the plan gives to other ranks (their weights are freed
   before the model moves to the device), moves the model, and installs the
   dispatcher on every MoE layer;
4. ``generate``/``embed`` run the runner on this rank's shard, then ``finish`` the
   dispatch rounds so that every rank leaves the batch together;
5. ``update_plan`` moves expert weights between ranks (see ``ExpertDispatcher``).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mmo_serving.config import PlacementPlan
from mmo_serving.engine.dispatch import ExpertDispatcher
from mmo_serving.engine.experts import (
    expert_leaves,
    find_moe_layers,
    keep_experts,
    leaf_tensor,
    num_experts,
)
from mmo_serving.engine.routing import contiguous_plan, layer_routes, validate_plan
from mmo_serving.engine.runner import RunnerFactory, activation_dtype, dense_checksum
from mmo_serving.engine.types import (
    EmbeddingRequest,
    GenerationRequest,
    GenerationResult,
)

T = TypeVar("T")


def _w_in(module: torch.nn.Module) -> torch.Tensor:
    """The first stacked expert tensor (``w_in``, or its int8 ``qweight``)."""
    return leaf_tensor(expert_leaves(module)[0])


def pick_device(use_cuda: bool) -> torch.device:
    if use_cuda and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


class RankWorker:
    """The model on one rank, wired for expert parallelism."""

    def __init__(
        self,
        rank: int,
        world: int,
        runner_factory: RunnerFactory,
        *,
        threads: int | None = 1,
        use_cuda: bool = True,
        timeout_s: float = 600.0,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.runner = runner_factory()
        self.model = self.runner.model
        self.model.eval()
        self.moe = find_moe_layers(self.model)
        self.num_layers = len(self.moe)
        self.num_experts = num_experts(self.moe[0])
        self.hidden_size = int(_w_in(self.moe[0]).shape[1])
        self.act_dtype = activation_dtype(self.model)
        expert_ids = {id(leaf_tensor(leaf)) for m in self.moe for leaf in expert_leaves(m)}
        self.checksum = dense_checksum(self.model, expert_ids)
        self.device = pick_device(use_cuda)
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        self.dispatcher: ExpertDispatcher | None = None
        self._store: Any = None

    # -- start-up -------------------------------------------------------------------
    def open_store(self, host: str = "127.0.0.1") -> tuple[str, int]:
        """Rank 0: open the rendezvous store on a free port of this node."""
        self._store = dist.TCPStore(
            host,
            0,
            self.world,
            is_master=True,
            timeout=datetime.timedelta(seconds=self.timeout_s),
            wait_for_workers=False,
        )
        return host, int(self._store.port)

    def setup(self, store: tuple[str, int] | None, plan: PlacementPlan | None) -> dict[str, Any]:
        if self.world > 1:
            if store is None:
                raise ValueError(f"rank {self.rank}: {self.world} ranks need a rendezvous store")
            if self._store is None:
                self._store = dist.TCPStore(
                    store[0],
                    store[1],
                    self.world,
                    is_master=False,
                    timeout=datetime.timedelta(seconds=self.timeout_s),
                )
            dist.init_process_group(
                self.backend,
                store=self._store,
                rank=self.rank,
                world_size=self.world,
                timeout=datetime.timedelta(seconds=self.timeout_s),
            )
        if plan is None:
            plan = contiguous_plan(self.num_layers, self.num_experts, self.world)
        validate_plan(
            plan, num_layers=self.num_layers, num_experts=self.num_experts, world=self.world
        )
        for module, route in zip(self.moe, layer_routes(plan), strict=True):
            keep_experts(module, route.local_experts[self.rank])
        self.runner.to(self.device)
        self.dispatcher = ExpertDispatcher(
            self.moe,
            plan,
            rank=self.rank,
            world=self.world,
            device=self.device,
            hidden_size=self.hidden_size,
            act_dtype=self.act_dtype,
        )
        for module in self.moe:
            setattr(module, "dispatcher", self.dispatcher)  # noqa: B010 (nn.Module typing)
        return self.info()

    # -- work -----------------------------------------------------------------------
    def _run(self, fn: Callable[[], list[T]]) -> list[T]:
        assert self.dispatcher is not None, "setup() first"
        error: BaseException | None = None
        results: list[T] = []
        with torch.inference_mode():
            try:
                results = fn()
            except Exception as exc:
                error = exc
            self.dispatcher.finish()
        if error is not None:
            raise error
        return results

    def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        return self._run(lambda: self.runner.generate(items) if items else [])

    def embed(self, items: list[EmbeddingRequest]) -> list[list[float]]:
        return self._run(lambda: self.runner.embed(items) if items else [])

    def update_plan(self, plan: PlacementPlan) -> int:
        assert self.dispatcher is not None, "setup() first"
        validate_plan(
            plan, num_layers=self.num_layers, num_experts=self.num_experts, world=self.world
        )
        with torch.inference_mode():
            return self.dispatcher.apply_plan(plan)

    # -- reports --------------------------------------------------------------------
    def expert_counts(self) -> tuple[list[list[int]], list[list[int]], int]:
        assert self.dispatcher is not None, "setup() first"
        return self.dispatcher.counts()

    def expert_checksums(self) -> list[dict[int, float]]:
        """Per layer: logical expert -> sum of its first stacked tensor on this rank."""
        assert self.dispatcher is not None, "setup() first"
        out = []
        for module, held in zip(self.moe, self.dispatcher.held_experts(), strict=True):
            w_in = _w_in(module)
            sums = w_in.detach().double().sum(dim=tuple(range(1, w_in.dim())))
            out.append({e: float(sums[j]) for j, e in enumerate(held)})
        return out

    def info(self) -> dict[str, Any]:
        held = self.dispatcher.held_experts() if self.dispatcher is not None else []
        return {
            "rank": self.rank,
            "world": self.world,
            "pid": os.getpid(),
            "device": str(self.device),
            "backend": self.backend if self.world > 1 else None,
            "numLayers": self.num_layers,
            "numExperts": self.num_experts,
            "heldExperts": held,
            "stackSizes": [int(_w_in(m).shape[0]) for m in self.moe],
            "dispatchRounds": self.dispatcher.rounds if self.dispatcher is not None else 0,
            "denseChecksum": self.checksum,
        }

    def shutdown(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
