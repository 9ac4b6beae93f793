"""The model as the engine sees it: a ``ModelRunner`` built on each rank by a factory.

A runner owns the torch model (whose MoE layers the engine finds and re-wires) and
answers generation and embedding requests for one shard of a batch. The factory is
called inside each rank, so it must be picklable (a module-level function or a
dataclass instance) and must build the same weights on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from mmo_serving.engine.types import EmbeddingRequest, GenerationRequest, GenerationResult


class ModelRunner(Protocol):
    model: nn.Module

    def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]: ...

    def embed(self, items: list[EmbeddingRequest]) -> list[list[float]]: ...

    def to(self, device: torch.device) -> None: ...


RunnerFactory = Callable[[], ModelRunner]


def activation_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the hidden states: that of the first floating-point parameter."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def dense_checksum(model: nn.Module, skip: set[int]) -> float:
    """Sum of every parameter not in ``skip`` (ids): equal on ranks with equal weights."""
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in skip and p.is_floating_point():
                total += float(p.double().sum())
    return total
