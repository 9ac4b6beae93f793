"""Shared fixtures of the unit tests."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# shared helpers of this folder (gateway_front) are imported by their module name
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Any]:
    """Factory of a small shapes-moe ModelConfig; keyword arguments override fields."""
    from mmo_serving.model.config import ModelConfig
    from mmo_serving.model.tokenizer import default_tokenizer

    vocab = len(default_tokenizer())

    def make(**over: Any) -> ModelConfig:
        base: dict[str, Any] = {
            "vocab_size": vocab,
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 2,
            "n_experts": 8,
            "top_k": 2,
            "d_expert": 16,
            "image_size": 16,
            "stem_channels": (8, 8),
            "embed_dim": 16,
        }
        base.update(over)
        return ModelConfig(**base)

    return make
