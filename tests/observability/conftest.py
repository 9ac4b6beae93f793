"""Observability test fixtures: the Prometheus harness (promharness.py beside this file) and
the table of vLLM's metric families (fake_vllm_exporter.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"mmo_obs_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def promharness() -> ModuleType:
    return _load("promharness")


@pytest.fixture(scope="session")
def vllm_exporter() -> ModuleType:
    return _load("fake_vllm_exporter")
