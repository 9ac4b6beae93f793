"""Check LLMConfig dicts made by mmo_serving.vllm_args with Ray Serve LLM's and vLLM's own
configuration classes. Run with the python of the venv that has Ray 2.60 and vLLM.

stdin: a JSON object {name: LLMConfig dict}. For each dict: Ray's ``LLMConfig`` accepts
it and turns it into the engine's arguments as a replica does (``VLLMEngineConfig``);
vLLM's ``AsyncEngineArgs`` accepts every engine argument (an unknown name is a
TypeError), its ``EPLBConfig`` the EPLB settings, its ``ParallelConfig`` the parallel
settings (without EPLB, which vLLM refuses on a machine without CUDA). Also: the kept list
of engine-argument names equals the installed vLLM's. Prints one line per config; exit
status 1 when any check fails.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

NAMES_FILE = Path(__file__).resolve().parents[1] / "serving/mmo_serving/vllm_engine_args.txt"
EPLB_ARGS = ("enable_eplb", "eplb_config")


def check(config: dict) -> None:
    from ray.llm._internal.serve.engines.vllm.vllm_models import VLLMEngineConfig
    from ray.serve.llm import LLMConfig
    from vllm.config import EPLBConfig, ParallelConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    # Ray Serve LLM's own engine arguments (it refuses some names mmo could set)
    VLLMEngineConfig.from_llm_config(LLMConfig(**config)).get_initialization_kwargs()
    kwargs = dict(config["engine_kwargs"])
    source = config["model_loading_config"]["model_source"]
    AsyncEngineArgs(model=source if isinstance(source, str) else "model", **kwargs)
    if "eplb_config" in kwargs:
        EPLBConfig(**kwargs["eplb_config"])
    parallel = {f.name for f in dataclasses.fields(ParallelConfig)} - set(EPLB_ARGS)
    ParallelConfig(**{k: v for k, v in kwargs.items() if k in parallel})


def kept_names_match() -> str | None:
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs

    kept = {
        line.strip()
        for line in NAMES_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    installed = {f.name for f in dataclasses.fields(AsyncEngineArgs) if not f.name.startswith("_")}
    if kept == installed:
        return None
    return (
        f"{NAMES_FILE.name} differs from vLLM {vllm.__version__}: missing "
        f"{sorted(installed - kept)}, extra {sorted(kept - installed)}; run make vllm-engine-args"
    )


def main() -> int:
    failed = 0
    for name, config in json.load(sys.stdin).items():
        try:
            check(config)
        except Exception as e:  # report every config, not just the first failure
            failed += 1
            print(f"{name}: FAILED: {type(e).__name__}: {' '.join(str(e).split())}")
        else:
            print(f"{name}: ok")
    stale = kept_names_match()
    if stale:
        failed += 1
        print(f"engine argument list: FAILED: {stale}")
    else:
        print("engine argument list: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
