"""Serving engines: ``LocalEngine`` (one process) and ``ExpertParallelEngine`` (N ranks).

Importing this package is light: the engines (torch, ray) load on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmo_serving.engine.types import (
    EmbeddingRequest,
    Engine,
    ExpertLoad,
    GenerationRequest,
    GenerationResult,
)

if TYPE_CHECKING:
    from mmo_serving.engine.in_process import LocalEngine
    from mmo_serving.engine.parallel import ExpertParallelEngine, make_engine

__all__ = [
    "EmbeddingRequest",
    "Engine",
    "ExpertLoad",
    "ExpertParallelEngine",
    "GenerationRequest",
    "GenerationResult",
    "LocalEngine",
    "make_engine",
]


def __getattr__(name: str) -> Any:
    """The engines load torch and ray: they are imported on first use."""
    if name == "LocalEngine":
        from mmo_serving.engine.in_process import LocalEngine

        return LocalEngine
    if name in ("ExpertParallelEngine", "make_engine"):
        from mmo_serving.engine import parallel

        return getattr(parallel, name)
    raise AttributeError(f"module 'mmo_serving.engine' has no attribute {name!r}")
