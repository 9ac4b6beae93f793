"""AppArgs -> Ray Serve LLM's ``LLMConfig``, as a plain dict (pure: no ray, no vllm).

One replica of a MultimodalModel is one data-parallel group of vLLM ranks over all its
GPUs: ``data_parallel_size = GPUs / tensor_parallel_size``, experts spread over the
group by expert parallelism. Ray Serve LLM runs each rank as one Serve replica and
counts autoscaling in whole groups (it multiplies min/max/initial replicas by the
data-parallel size), so ``autoscaling.minReplicas``/``maxReplicas`` keep their meaning:
the fewest and most full sets of GPUs. ``max_num_seqs``, ``target_ongoing_requests``
and ``max_ongoing_requests`` apply per rank (each rank schedules its own batch).

EPLB counts engine steps, mmo counts seconds: ``step_interval`` is
``rebalance_interval_s * EPLB_STEPS_PER_SECOND`` (10 steps a second, so mmo's default of
300 s is vLLM's default of 3000 steps) and ``window_size`` a third of it (vLLM's own
ratio, 1000 to 3000). An idle engine takes no steps and so re-places nothing.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import PurePosixPath
from typing import Any, Literal

from mmo_serving.config import AppArgs, VllmArgs

PVC_ROOT = "/mnt/models"
ENGINE_ARGS_FILE = "vllm_engine_args.txt"
EPLB_STEPS_PER_SECOND = 10
EPLB_WINDOW_FRACTION = 3
IMAGES_PER_PROMPT = 4
CPU_KV_CACHE_BYTES = 2**30
# vLLM 0.29's CPU rotary kernel takes a query of shape (tokens, heads, dim) for
# tokens x heads one-head tokens and rotates each by the position of the wrong token; MLA
# models (DeepSeek-V2/V3) pass their rope part in that shape. PyTorch's rotary is exact.
CPU_CUSTOM_OPS = ("-rotary_embedding",)
# On CPUs with AMX tiles vLLM picks its AMX MLA attention, which takes only 16-bit or
# quantized weights: a float32 MLA model then fails to load. The reference CPU MLA
# backend runs float32; models without MLA ignore the choice (vLLM's CPU attention).
CPU_FLOAT32_ATTENTION_BACKEND = "CPU_MLA"
# A replica whose engine spans 8 GPUs can stall in one long step (EPLB moving experts, a
# long prefill): Serve's default 30 s health timeout would restart it and reload the model
HEALTH_CHECK_PERIOD_S = 10
HEALTH_CHECK_TIMEOUT_S = 120
PLACEMENT_STRATEGY = {"contiguous": "linear", "roundRobin": "round_robin"}
# Formats vLLM applies on load; the others it reads from the checkpoint's quantization_config
LOAD_TIME_QUANTIZATION = {"fp8": "fp8", "experts-int8": "experts_int8"}

Accelerator = Literal["gpu", "cpu"]


class VllmArgsError(ValueError):
    """The AppArgs cannot be turned into an LLMConfig; the message says why."""


@cache
def engine_arg_names() -> tuple[str, frozenset[str]]:
    """(vLLM version, names of its engine arguments), from the list kept in the package."""
    text = resources.files("mmo_serving").joinpath(ENGINE_ARGS_FILE).read_text()
    version = "unknown"
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# Engine arguments of vLLM "):
            version = line.split("vLLM ", 1)[1].split(" ", 1)[0]
        elif line and not line.startswith("#"):
            names.add(line)
    return version, frozenset(names)


def model_source(source: str, pvc_root: str = PVC_ROOT) -> str | dict[str, str]:
    """Where vLLM reads the checkpoint: ``pvc://CLAIM/PATH`` is the claim mounted at
    ``PVC_ROOT/CLAIM`` (the operator's volume mount), ``hf://ORG/NAME`` the hub id,
    ``s3://`` a Ray Serve LLM cloud mirror; ``file://DIR`` and plain paths are local."""
    if source.startswith("pvc://"):
        rest = source[len("pvc://") :].rstrip("/")
        claim, _, path = rest.partition("/")
        if not claim or ".." in PurePosixPath(rest).parts:
            raise VllmArgsError(f"model source {source!r}: expected pvc://CLAIM/PATH")
        return str(PurePosixPath(pvc_root, claim, path))
    if source.startswith("hf://"):
        return source[len("hf://") :]
    if source.startswith("s3://"):
        return {"bucket_uri": source}
    if source.startswith("file://"):
        return source[len("file://") :]
    if "://" in source:
        raise VllmArgsError(
            f"model source {source!r} cannot be served by vLLM; valid: pvc://CLAIM/PATH, "
            "s3://BUCKET/PATH, hf://ORG/NAME, file://DIR or a local directory"
        )
    return source


def data_parallel_size(args: AppArgs, vllm: VllmArgs) -> int:
    if args.num_gpus % vllm.tensor_parallel_size:
        raise VllmArgsError(
            f"tensorParallelSize {vllm.tensor_parallel_size} does not divide the "
            f"{args.num_gpus} GPUs of a replica"
        )
    return args.num_gpus // vllm.tensor_parallel_size


def images_per_prompt(args: AppArgs) -> int:
    """vLLM's ``limit_mm_per_prompt`` for images: what the front lets one request carry."""
    return IMAGES_PER_PROMPT if "image" in args.modalities else 0


def eplb_config(vllm: VllmArgs) -> dict[str, int]:
    step_interval = max(1, round(vllm.rebalance_interval_s * EPLB_STEPS_PER_SECOND))
    return {
        "num_redundant_experts": vllm.redundant_experts,
        "window_size": max(1, step_interval // EPLB_WINDOW_FRACTION),
        "step_interval": step_interval,
    }


def engine_kwargs(args: AppArgs, vllm: VllmArgs, accelerator: Accelerator) -> dict[str, Any]:
    """vLLM's engine arguments; the user's ``engine_args`` come last."""
    dp = data_parallel_size(args, vllm) if accelerator == "gpu" else 1
    kw: dict[str, Any] = {
        "dtype": args.dtype,
        "tensor_parallel_size": vllm.tensor_parallel_size,
        "data_parallel_size": dp,
        "max_num_seqs": args.batching.max_batch_size,
        "limit_mm_per_prompt": {"image": images_per_prompt(args)},
    }
    # expert parallelism and EPLB do not run on vLLM's CPU backend
    if accelerator == "gpu" and args.num_gpus > 1:
        kw["enable_expert_parallel"] = True
        if vllm.expert_placement == "balanced":
            kw["enable_eplb"] = True
            kw["eplb_config"] = eplb_config(vllm)
        else:
            kw["expert_placement_strategy"] = PLACEMENT_STRATEGY[vllm.expert_placement]
        if vllm.all2all_backend is not None:
            kw["all2all_backend"] = vllm.all2all_backend
    if args.quantization in LOAD_TIME_QUANTIZATION:
        kw["quantization"] = LOAD_TIME_QUANTIZATION[args.quantization]
    if vllm.max_model_len is not None:
        kw["max_model_len"] = vllm.max_model_len
    if accelerator == "gpu":
        kw["gpu_memory_utilization"] = vllm.gpu_memory_utilization
    else:
        kw["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        kw["compilation_config"] = {"custom_ops": list(CPU_CUSTOM_OPS)}
        if args.dtype == "float32":
            kw["attention_backend"] = CPU_FLOAT32_ATTENTION_BACKEND
    kw.update(vllm.engine_args)
    return kw


def deployment_config(args: AppArgs) -> dict[str, Any]:
    """Serve options of the LLM deployment; replica counts are data-parallel groups."""
    return {
        "autoscaling_config": args.autoscaling.serve_autoscaling_config(),
        "max_ongoing_requests": args.autoscaling.max_ongoing_requests,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
    }


def llm_config(
    args: AppArgs, *, accelerator: Accelerator = "gpu", pvc_root: str = PVC_ROOT
) -> dict[str, Any]:
    """Ray Serve LLM's ``LLMConfig`` for ``args`` as a dict (``LLMConfig(**d)``).

    ``accelerator="cpu"`` is the variant for a machine without GPUs (``mmo up``): one
    rank, no expert parallelism, ``accelerator_config`` of kind cpu, a KV cache of
    ``CPU_KV_CACHE_BYTES`` unless ``engine_args`` sizes it, and PyTorch's rotary
    embedding instead of vLLM's CPU kernel (``CPU_CUSTOM_OPS``).
    """
    if args.engine != "vllm":
        raise VllmArgsError(f"engine is {args.engine!r}; an LLMConfig is built for vllm only")
    vllm = args.vllm or VllmArgs()
    config: dict[str, Any] = {
        "model_loading_config": {
            "model_id": args.name,
            "model_source": model_source(args.model_source, pvc_root),
        },
        "llm_engine": "vLLM",
        "engine_kwargs": engine_kwargs(args, vllm, accelerator),
        "deployment_config": deployment_config(args),
        # each token to the client as soon as it is decoded, not in 50 ms bursts
        "experimental_configs": {"stream_batching_interval_ms": 0},
        # vLLM's metrics through Ray's endpoint (ray_vllm_*): the Engine dashboard and the
        # KV-cache and time-to-first-token alerts read them
        "log_engine_metrics": True,
    }
    if accelerator == "cpu":
        config["accelerator_config"] = {"kind": "cpu"}
    elif vllm.accelerator_type is not None:
        config["accelerator_type"] = vllm.accelerator_type
    return config
