"""Architectures of the models shipped in the package (``builtin://NAME``).

Read from the checkpoint itself without importing torch: ``config.json`` gives the
shape of the model and the safetensors header gives the exact parameter counts.
"""

from __future__ import annotations

import json
import struct
from functools import cache
from importlib import resources
from pathlib import Path

from .v1alpha1 import Architecture

SERVING_PACKAGE = "mmo_serving"
# Tensors whose name contains one of these are routed-expert weights (stacked [E, ...]).
EXPERT_TENSOR_MARKERS = (".w_in", ".w_out", ".w_gate")
# What the serving engine can do with a shipped model (mmo_serving.engine.builtin_runner).
BUILTIN_QUANTIZATIONS = ("none", "int8")


class UnknownBuiltin(LookupError):
    pass


def assets_dir() -> Path:
    # assets/ is a data folder, not a package: resolve it from the package that holds it
    return Path(str(resources.files(SERVING_PACKAGE).joinpath("assets")))


def available_builtins() -> list[str]:
    root = assets_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def checkpoint_dir(name: str) -> Path:
    path = assets_dir() / name
    if not (path / "config.json").is_file():
        have = ", ".join(available_builtins()) or "none in this installation"
        raise UnknownBuiltin(f"unknown builtin model {name!r}; available: {have}")
    return path


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


@cache
def builtin_architecture(name: str) -> Architecture:
    path = checkpoint_dir(name)
    cfg = json.loads((path / "config.json").read_text())
    shapes = safetensors_shapes(path / "model.safetensors")
    total = routed = 0
    for tensor, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        total += n
        if any(m in tensor for m in EXPERT_TENSOR_MARKERS):
            routed += n
    experts, top_k = int(cfg["n_experts"]), int(cfg["top_k"])
    active = total - routed + routed * top_k // experts
    return Architecture(
        total_params=total,
        active_params=active,
        num_layers=int(cfg["n_layers"]),
        num_experts=experts,
        experts_per_token=top_k,
        shared_experts=1 if cfg.get("shared_expert") else 0,
        vocab_size=int(cfg["vocab_size"]),
    )
