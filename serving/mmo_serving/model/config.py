"""Model configuration (``config.json`` of a checkpoint). No torch import."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ARCHITECTURE = "shapes-moe"


class ConfigError(ValueError):
    """config.json is unreadable, incomplete or inconsistent."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    architecture: str = ARCHITECTURE
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 128
    shared_expert: int = 0  # hidden size of an always-on shared expert; 0 = none
    image_size: int = 64  # the model's input: image_size x image_size RGB
    stem_channels: tuple[int, int] = (32, 64)  # conv stem; 3 stride-2 convs -> /8 grid
    stem_refine: int = 1  # residual 3x3 convs on the token grid (wider receptive field)
    max_text_len: int = 24
    embed_dim: int = 64
    aux_loss_weight: float = 0.01

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_experts",
            "top_k",
            "d_expert",
            "image_size",
            "max_text_len",
            "embed_dim",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.stem_refine, int) or self.stem_refine < 0:
            problems.append(f"stem_refine must be an integer >= 0, got {self.stem_refine!r}")
        if not isinstance(self.shared_expert, int) or self.shared_expert < 0:
            problems.append(
                f"shared_expert must be an integer >= 0 (0: none), got {self.shared_expert!r}"
            )
        stem = self.stem_channels
        if not (
            isinstance(stem, tuple | list)
            and len(stem) == 2
            and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in stem)
        ):
            problems.append(f"stem_channels must be two positive integers, got {stem!r}")
        weight = self.aux_loss_weight
        if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
            problems.append(f"aux_loss_weight must be a number >= 0, got {weight!r}")
        if not problems:
            if self.d_model % self.n_heads:
                problems.append(
                    f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
                )
            if self.top_k > self.n_experts:
                problems.append(f"top_k ({self.top_k}) must be <= n_experts ({self.n_experts})")
            if self.image_size % 8:
                problems.append(f"image_size ({self.image_size}) must be a multiple of 8")
        if self.architecture != ARCHITECTURE:
            problems.append(f"architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))

    @property
    def grid(self) -> int:
        return self.image_size // 8

    @property
    def n_image_tokens(self) -> int:
        return self.grid * self.grid

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stem_channels"] = list(self.stem_channels)
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, data: object, where: str = "config.json") -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {sorted(known)}")
        if "vocab_size" not in data:
            raise ConfigError(f"{where}: missing required key 'vocab_size'")
        kwargs = dict(data)
        if "stem_channels" in kwargs:
            kwargs["stem_channels"] = tuple(kwargs["stem_channels"])
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: invalid JSON ({e.msg} at line {e.lineno})") from e
        return cls.from_json(data, str(p))
