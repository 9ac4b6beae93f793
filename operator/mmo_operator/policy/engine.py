"""Admission rules of the serving engine (pure; used by ``mmo validate`` and the webhook).

The CRD's CEL rules already refuse an engine that cannot serve the source and a
``serving.vllm`` block under engine mmo. What this module adds:

- ``serving.vllm.engineArgs``: every name must be an engine argument of the vLLM the
  serving image runs (the list in ``mmo_serving/vllm_engine_args.txt``, refreshed by
  ``make vllm-engine-args``); a misspelled one is refused with the nearest valid name.
  Names that mmo sets from its own fields are refused with the field to use instead:
  two places for one setting would let them disagree.
- ``model.quantization`` under engine vllm names the checkpoint's format (awq-int4,
  gptq-int4, w4a16, w8a8-int8, fp8, experts-int8): the built-in engine's generic int8 and
  int4 do not say which kernels vLLM would need.
- fp8 is W8A8 FP8, which needs FP8 tensor cores: compute capability 8.9 (L40S, H100,
  H200). An A100 (8.0) runs FP8 checkpoints weight-only at best, so admission refuses it
  there and names formats that run on the GPU.
"""

from __future__ import annotations

import difflib
import re

from mmo_operator.api import MultimodalModel, Problem
from mmo_operator.api.v1alpha1 import engine_of
from mmo_serving.vllm_args import engine_arg_names

ENGINE_ARGS_PATH = "spec.serving.vllm.engineArgs"

# vLLM engine argument -> the mmo field it is derived from
OWNED_ENGINE_ARGS: dict[str, str] = {
    "model": "spec.model.source",
    "served_model_name": "metadata.name",
    "dtype": "spec.model.dtype",
    "quantization": "spec.model.quantization",
    "tensor_parallel_size": "spec.serving.vllm.tensorParallelSize",
    "data_parallel_size": "spec.resources (gpusPerNode * nodesPerReplica / tensorParallelSize)",
    "pipeline_parallel_size": "spec.resources (a replica is one data-parallel group)",
    "enable_expert_parallel": "spec.resources (on when a replica has more than one GPU)",
    "enable_eplb": "spec.experts.placement (balanced turns EPLB on)",
    "eplb_config": "spec.experts.redundantExperts and spec.experts.rebalance",
    "expert_placement_strategy": "spec.experts.placement",
    "max_num_seqs": "spec.batching.maxBatchSize",
    "max_model_len": "spec.serving.vllm.maxModelLen",
    "gpu_memory_utilization": "spec.serving.vllm.gpuMemoryUtilization",
    "all2all_backend": "spec.serving.vllm.all2allBackend",
    "limit_mm_per_prompt": "spec.model.modalities",
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).replace("-", "_").lower()


def engine_arg_problems(model: MultimodalModel) -> list[Problem]:
    settings = model.spec.serving.vllm
    if settings is None or not settings.engine_args:
        return []
    version, known = engine_arg_names()
    problems = []
    for name in settings.engine_args:
        path = f"{ENGINE_ARGS_PATH}.{name}"
        snake = _snake(name)
        if name in OWNED_ENGINE_ARGS or (snake != name and snake in OWNED_ENGINE_ARGS):
            owner = OWNED_ENGINE_ARGS[name if name in OWNED_ENGINE_ARGS else snake]
            problems.append(Problem(path, f"set by mmo from {owner}; use that field instead"))
        elif name not in known:
            if snake in known:
                hint = f"; did you mean {snake}? (engine arguments are snake_case)"
            else:
                close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(Problem(path, f"not an engine argument of vLLM {version}{hint}"))
    return problems


QUANTIZATION_PATH = "spec.model.quantization"
COMPUTE_CAPABILITY = {
    "A100-40GB": (8, 0),
    "A100-80GB": (8, 0),
    "L40S-48GB": (8, 9),
    "H100-80GB": (9, 0),
    "H200-141GB": (9, 0),
}
FP8_MIN_CAPABILITY = (8, 9)
VLLM_FORMATS = {
    "int8": "w8a8-int8 or experts-int8",
    "int4": "awq-int4, gptq-int4 or w4a16",
}


def quantization_problems(model: MultimodalModel) -> list[Problem]:
    spec = model.spec
    quantization, gpu = spec.model.quantization, spec.resources.gpu_type
    if engine_of(spec) != "vllm":
        return []
    if quantization in VLLM_FORMATS:
        return [
            Problem(
                QUANTIZATION_PATH,
                f"{quantization} is the built-in engine's; with engine vllm name the "
                f"checkpoint's format: {VLLM_FORMATS[quantization]}",
            )
        ]
    capability = COMPUTE_CAPABILITY[gpu]
    if quantization == "fp8" and capability < FP8_MIN_CAPABILITY:
        able = ", ".join(g for g, c in COMPUTE_CAPABILITY.items() if c >= FP8_MIN_CAPABILITY)
        return [
            Problem(
                QUANTIZATION_PATH,
                f"fp8 (W8A8) needs compute capability 8.9 ({able}); {gpu} has "
                f"{capability[0]}.{capability[1]}: use a w8a8-int8, awq-int4, gptq-int4 or "
                "w4a16 checkpoint, or a GPU type that has FP8",
            )
        ]
    return []


def check_engine(model: MultimodalModel) -> list[Problem]:
    """Every engine rule beyond the CRD's."""
    return engine_arg_problems(model) + quantization_problems(model)
