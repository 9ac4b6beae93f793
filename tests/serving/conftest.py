"""Shared fixtures of the serving tests.

``ray_cluster``: one private local Ray per test session (8 logical GPUs, compute on the
CPU), started on first use and always shut down at the end (Serve too, if a test started
it). Tests that need Ray take this fixture; the others never start Ray.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

RAY_NUM_CPUS = 4
RAY_NUM_GPUS = 8


def _load_engine_toy() -> None:
    """engine_toy.py as the module ``mmo_engine_toy``, pickled by value for Ray workers."""
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path

    if "mmo_engine_toy" in sys.modules:
        return
    spec = spec_from_file_location("mmo_engine_toy", Path(__file__).with_name("engine_toy.py"))
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if importlib.util.find_spec("ray") is not None:
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(module)


_load_engine_toy()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    import ray

    if ray.is_initialized():
        raise RuntimeError("ray_cluster: Ray is already initialised in this process")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray.init(
        num_cpus=RAY_NUM_CPUS,
        num_gpus=RAY_NUM_GPUS,
        include_dashboard=False,
        object_store_memory=300 * 1024 * 1024,
        log_to_driver=True,
    )
    try:
        yield ray
    finally:
        try:
            if "ray.serve" in sys.modules:
                from ray import serve

                serve.shutdown()
        finally:
            ray.shutdown()
