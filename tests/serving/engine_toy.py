"""A tiny MoE language model for the engine tests (not collected: no ``test_`` prefix).

It follows the model interface the engine relies on (``MoEFeedForward``-like modules with
``router``, ``route()``, stacked ``w_in``/``w_gate``/``w_out``, ``dispatcher``,
``moe_layer_index``; a module-level ``grouped_expert_forward``) and generates with a
per-sequence cache, one request after the other, so ranks with different shards run
different numbers of forward passes: the case the dispatch protocol must survive.
``conftest.py`` loads it by path as ``mmo_engine_toy`` and registers it with
``ray.cloudpickle.register_pickle_by_value`` (Ray workers cannot import test files);
test modules then ``import mmo_engine_toy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmo_serving.config import EMPTY_SLOT, LayerPlacement, PlacementPlan
from mmo_serving.engine.types import EmbeddingRequest, GenerationRequest, GenerationResult

ALPHABET = "abcdefghijklmnopqrstuvwxyz .?!0123456789"
EOS = len(ALPHABET)
FAIL = "!fail"  # a prompt that makes the runner raise (error-path tests)

# The built-in shapes-moe architecture, small enough for a CPU (``ModelSource(tiny=...)``).
TINY_SHAPES: dict[str, Any] = {
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 2,
    "n_experts": 8,
    "top_k": 2,
    "d_expert": 32,
    "image_size": 32,
    "stem_channels": (8, 16),
    "embed_dim": 16,
}


def grouped_expert_forward(
    x2d: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_w: torch.Tensor,
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    w_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    n_tok, k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w_in.shape[0]).tolist()
    tok = torch.arange(n_tok).repeat_interleave(k)[order]
    weights = topk_w.reshape(-1)[order]
    y = torch.zeros_like(x2d)
    start = 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        idx = tok[start : start + c]
        xe = x2d[idx]
        h = F.silu(xe @ w_in[e])
        if w_gate is not None:
            h = h * (xe @ w_gate[e])
        y.index_add_(0, idx, (h @ w_out[e]) * weights[start : start + c, None])
        start += c
    return y


class ToyMoE(nn.Module):
    def __init__(self, hidden: int, inner: int, experts: int, top_k: int, index: int) -> None:
        super().__init__()
        self.router = nn.Linear(hidden, experts, bias=False)
        scale = hidden**-0.5
        self.w_in = nn.Parameter(torch.randn(experts, hidden, inner) * scale)
        self.w_gate = nn.Parameter(torch.randn(experts, hidden, inner) * scale)
        self.w_out = nn.Parameter(torch.randn(experts, inner, hidden) * inner**-0.5)
        self.top_k = top_k
        self.moe_layer_index = index
        self.dispatcher = None

    def route(self, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(self.router(x2d.float()), dim=-1)
        w, ids = torch.topk(probs, self.top_k, dim=-1)
        return ids, (w / w.sum(-1, keepdim=True)).to(x2d.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1])
        ids, w = self.route(x2d)
        if self.dispatcher is not None:
            y = self.dispatcher(self, x2d, ids, w)
        else:
            y = grouped_expert_forward(x2d, ids, w, self.w_in, self.w_out, self.w_gate)
        return y.reshape(x.shape)


class ToyLM(nn.Module):
    """Embedding, then blocks of (causal running-mean mixer, MoE), then a head."""

    def __init__(self, hidden: int, inner: int, experts: int, top_k: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(EOS + 1, hidden)
        self.mix = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.moe = nn.ModuleList(ToyMoE(hidden, inner, experts, top_k, i) for i in range(layers))
        self.head = nn.Linear(hidden, EOS + 1)

    def forward(
        self, ids: torch.Tensor, cache: list[tuple[torch.Tensor, int]] | None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int]]]:
        """ids [T] of one sequence; cache per layer: (running sum [H], length)."""
        x = self.embed(ids)
        new_cache = []
        for i, (mix, norm, moe) in enumerate(zip(self.mix, self.norms, self.moe, strict=True)):
            prev_sum, prev_len = cache[i] if cache else (x.new_zeros(x.shape[-1]), 0)
            csum = prev_sum + torch.cumsum(x, dim=0)
            n = prev_len + torch.arange(1, x.shape[0] + 1).unsqueeze(1)
            x = x + torch.tanh(mix(csum / n))
            x = x + moe(norm(x))
            new_cache.append((csum[-1], prev_len + x.shape[0]))
        return x, new_cache


def encode(text: str) -> torch.Tensor:
    return torch.tensor([ALPHABET.index(c) if c in ALPHABET else 0 for c in text.lower()] or [0])


@dataclass
class ToyRunner:
    model: ToyLM

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for item in items:
            if item.text == FAIL:
                raise RuntimeError("toy failure on purpose")
            hidden, cache = self.model(encode(item.text), None)
            out: list[int] = []
            while len(out) < item.max_new_tokens:
                tok = int(self.model.head(hidden[-1]).argmax())
                if tok == EOS:
                    break
                out.append(tok)
                hidden, cache = self.model(torch.tensor([tok]), cache)
            results.append(GenerationResult("".join(ALPHABET[t] for t in out), len(out)))
        return results

    def embed(self, items: list[EmbeddingRequest]) -> list[list[float]]:
        ids = [encode(item.text or "") for item in items]
        return [self.model(i, None)[0].mean(0).tolist() for i in ids]


@dataclass(frozen=True)
class ToyFactory:
    """Picklable factory: the same seed builds the same weights on every rank."""

    hidden: int = 16
    inner: int = 24
    experts: int = 8
    top_k: int = 2
    layers: int = 2
    seed: int = 0
    dtype: str = "float32"

    def __call__(self) -> ToyRunner:
        torch.manual_seed(self.seed)
        model = ToyLM(self.hidden, self.inner, self.experts, self.top_k, self.layers)
        model.to(getattr(torch, self.dtype))
        for moe in model.moe:
            moe.router.float()  # routers stay float32 (as in the real model)
        return ToyRunner(model)


def plan_from_gpus(per_layer: list[list[list[int]]], experts: int) -> PlacementPlan:
    """A plan from, per layer, the experts of each GPU (all GPUs the same slot count)."""
    gpus = len(per_layer[0])
    per_gpu = max(len(g) for layer in per_layer for g in layer)
    layers = []
    for i, layer in enumerate(per_layer):
        slots = [e for g in layer for e in g + [EMPTY_SLOT] * (per_gpu - len(g))]
        replicas = [slots.count(e) for e in range(experts)]
        loads = [float(len(g)) for g in layer]
        bal = max(loads) / (sum(loads) / gpus)
        layers.append(
            LayerPlacement(
                layer=i, slots=slots, replicas=replicas, gpu_load=loads, balancedness=bal
            )
        )
    return PlacementPlan(
        strategy="balanced",
        num_gpus=gpus,
        slots_per_gpu=per_gpu,
        num_experts=experts,
        redundant_experts=per_gpu * gpus - experts,
        layers=layers,
        balancedness=max(lp.balancedness for lp in layers),
    )


def count_moe_rows(model: nn.Module) -> list[int]:
    """Install hooks adding each MoE call's (tokens x top_k) to the returned list.

    Works for any MoE module with ``moe_layer_index`` and ``top_k`` (toy or real)."""
    moe = [m for m in model.modules() if hasattr(m, "moe_layer_index") and hasattr(m, "top_k")]
    rows = [0] * len(moe)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        rows[module.moe_layer_index] += inputs[0].reshape(-1, inputs[0].shape[-1]).shape[0] * (
            module.top_k
        )

    for m in moe:
        m.register_forward_pre_hook(hook)
    return rows


@dataclass
class _FailingRunner:
    inner: Any

    @property
    def model(self) -> nn.Module:
        return self.inner.model

    def to(self, device: torch.device) -> None:
        self.inner.to(device)

    def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        if any(i.text == FAIL for i in items):
            raise RuntimeError("toy failure on purpose")
        return self.inner.generate(items)

    def embed(self, items: list[EmbeddingRequest]) -> list[list[float]]:
        return self.inner.embed(items)


@dataclass(frozen=True)
class FailOn:
    """Wraps a runner factory: generating for the prompt ``FAIL`` raises on that rank."""

    factory: Any

    def __call__(self) -> _FailingRunner:
        return _FailingRunner(self.factory())


class ReplicaLike:
    """Owns an engine from inside an actor, as a Serve replica does (make it a Ray actor
    with ``ray.remote(ReplicaLike)``; it is pickled by value with this module)."""

    def __init__(self, args: Any, factory: Any) -> None:
        from mmo_serving.engine import ExpertParallelEngine

        self.engine = ExpertParallelEngine(args, factory)

    async def placement(self) -> dict[str, Any]:
        import ray

        infos = await self.engine.rank_info()
        return {
            "mine": ray.get_runtime_context().get_placement_group_id(),
            "engine": self.engine.placement_group_id,
            "ownsGroup": self.engine._own_pg,
            "ranks": [i["placementGroupId"] for i in infos],
            "gpus": [tuple(i["gpuIds"]) for i in infos],
        }

    async def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]:
        return await self.engine.generate(items)

    async def close(self) -> None:
        await self.engine.close()
