"""AppArgs -> Ray Serve LLM's LLMConfig (mmo_serving.vllm_args) for the samples and edges."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmo_operator.builders.app_args import build_app_args
from mmo_operator.policy.engine import OWNED_ENGINE_ARGS
from mmo_operator.validation import validate, validate_file
from mmo_serving.config import AppArgs
from mmo_serving.vllm_args import (
    VllmArgsError,
    engine_arg_names,
    llm_config,
    model_source,
)

ROOT = Path(__file__).resolve().parents[2]
DEEPSEEK = ROOT / "manifests/samples/deepseek-v3-int4.yaml"


def _doc(path: Path = DEEPSEEK) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _args(doc: dict[str, Any]) -> AppArgs:
    return build_app_args(validate(doc).model, None)


def _with(patch: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(_doc())
    for key, value in patch.items():
        doc["spec"].setdefault(key, {}).update(value)
    return doc


def test_deepseek_sample_maps_to_expert_parallel_vllm() -> None:
    args = build_app_args(validate_file(DEEPSEEK).model, None)
    assert args.engine == "vllm"
    config = llm_config(args)
    assert config["model_loading_config"] == {
        "model_id": "deepseek-v3-int4",
        "model_source": "/mnt/models/model-store/deepseek-v3-awq",
    }
    assert config["accelerator_type"] == "A100-80G"
    assert "accelerator_config" not in config
    kw = config["engine_kwargs"]
    assert kw["data_parallel_size"] == 8 and kw["tensor_parallel_size"] == 1
    assert kw["enable_expert_parallel"] is True
    assert kw["enable_eplb"] is True
    assert kw["eplb_config"]["num_redundant_experts"] == args.vllm.redundant_experts
    assert kw["max_num_seqs"] == 16
    assert kw["limit_mm_per_prompt"] == {"image": 0}  # text only
    # Ray Serve LLM names the served model from model_id and refuses the engine argument
    assert config["model_loading_config"]["model_id"] == "deepseek-v3-int4"
    assert "served_model_name" not in kw and "model" not in kw
    assert "expert_placement_strategy" not in kw


def test_rebalance_interval_becomes_eplb_steps() -> None:
    kw = llm_config(_args(_with({"experts": {"rebalance": {"intervalSeconds": 60}}})))
    eplb = kw["engine_kwargs"]["eplb_config"]
    assert eplb["step_interval"] == 600 and eplb["window_size"] == 200
    # mmo's default interval is vLLM's default (3000 steps, window 1000)
    default = llm_config(_args(_doc()))["engine_kwargs"]["eplb_config"]
    assert (default["step_interval"], default["window_size"]) == (3000, 1000)


@pytest.mark.parametrize(
    ("placement", "strategy"), [("contiguous", "linear"), ("roundRobin", "round_robin")]
)
def test_static_placements_map_to_vllm_strategies(placement: str, strategy: str) -> None:
    kw = llm_config(_args(_with({"experts": {"placement": placement}})))["engine_kwargs"]
    assert kw["expert_placement_strategy"] == strategy
    assert "enable_eplb" not in kw and "eplb_config" not in kw


def test_tensor_parallel_divides_the_gpus_into_data_parallel_ranks() -> None:
    doc = _with({"serving": {"vllm": {"tensorParallelSize": 2, "maxModelLen": 8192}}})
    kw = llm_config(_args(doc))["engine_kwargs"]
    assert (kw["tensor_parallel_size"], kw["data_parallel_size"]) == (2, 4)
    assert kw["max_model_len"] == 8192 and kw["gpu_memory_utilization"] == 0.9


def test_vllm_settings_and_user_engine_args_come_last() -> None:
    doc = _with(
        {
            "serving": {
                "vllm": {
                    "gpuMemoryUtilization": 0.85,
                    "all2allBackend": "deepep_low_latency",
                    "engineArgs": {"enforce_eager": True, "max_num_batched_tokens": 4096},
                }
            }
        }
    )
    kw = llm_config(_args(doc))["engine_kwargs"]
    assert kw["gpu_memory_utilization"] == 0.85
    assert kw["all2all_backend"] == "deepep_low_latency"
    assert kw["enforce_eager"] is True and kw["max_num_batched_tokens"] == 4096
    assert list(kw)[-2:] == ["enforce_eager", "max_num_batched_tokens"]


def test_image_modality_allows_images_per_prompt() -> None:
    kw = llm_config(_args(_with({"model": {"modalities": ["text", "image"]}})))["engine_kwargs"]
    assert kw["limit_mm_per_prompt"]["image"] > 0


def test_autoscaling_counts_data_parallel_groups() -> None:
    doc = _with({"autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetOngoingRequests": 4}})
    deployment = llm_config(_args(doc))["deployment_config"]
    auto = deployment["autoscaling_config"]
    # Ray Serve LLM multiplies these by data_parallel_size: they count whole replicas
    assert (auto["min_replicas"], auto["max_replicas"], auto["initial_replicas"]) == (1, 3, 1)
    assert auto["target_ongoing_requests"] == 4
    assert deployment["max_ongoing_requests"] == 32  # 2 x maxBatchSize 16
    assert deployment["health_check_timeout_s"] >= 120  # an 8-GPU engine's long steps


def test_tokens_stream_as_they_are_decoded() -> None:
    config = llm_config(_args(_doc()))
    assert config["experimental_configs"] == {"stream_batching_interval_ms": 0}


def test_engine_metrics_go_through_rays_endpoint() -> None:
    assert llm_config(_args(_doc()))["log_engine_metrics"] is True


def test_one_gpu_has_no_expert_parallelism() -> None:
    args = AppArgs.model_validate(_args(_doc()).to_json_dict() | {"numGpus": 1})
    kw = llm_config(args)["engine_kwargs"]
    assert kw["data_parallel_size"] == 1
    assert not {"enable_expert_parallel", "enable_eplb", "expert_placement_strategy"} & set(kw)


def test_cpu_variant_runs_one_rank_without_expert_parallelism() -> None:
    doc = _with({"serving": {"vllm": {"all2allBackend": "naive"}}})
    config = llm_config(_args(doc), accelerator="cpu")
    assert config["accelerator_config"] == {"kind": "cpu"}
    assert "accelerator_type" not in config  # Ray refuses a GPU type with a CPU config
    kw = config["engine_kwargs"]
    assert kw["data_parallel_size"] == 1
    assert not {"enable_expert_parallel", "enable_eplb", "all2all_backend"} & set(kw)
    assert "gpu_memory_utilization" not in kw and kw["kv_cache_memory_bytes"] > 0
    sized = _with({"serving": {"vllm": {"engineArgs": {"kv_cache_memory_bytes": 123}}}})
    assert (
        llm_config(_args(sized), accelerator="cpu")["engine_kwargs"]["kv_cache_memory_bytes"] == 123
    )


def test_cpu_variant_rotates_with_pytorch_not_vllms_cpu_kernel() -> None:
    # vLLM's CPU rotary kernel mis-rotates MLA's (tokens, heads, dim) query views
    kw = llm_config(_args(_doc()), accelerator="cpu")["engine_kwargs"]
    assert kw["compilation_config"] == {"custom_ops": ["-rotary_embedding"]}
    assert "compilation_config" not in llm_config(_args(_doc()))["engine_kwargs"]


def test_cpu_variant_in_float32_pins_the_reference_mla_attention() -> None:
    # on a CPU with AMX, vLLM's AMX MLA attention refuses float32 weights
    bf16 = _args(_doc())
    assert bf16.dtype == "bfloat16"
    assert "attention_backend" not in llm_config(bf16, accelerator="cpu")["engine_kwargs"]
    float32 = bf16.model_copy(update={"dtype": "float32"})
    kw = llm_config(float32, accelerator="cpu")["engine_kwargs"]
    assert kw["attention_backend"] == "CPU_MLA"
    assert "attention_backend" not in llm_config(float32)["engine_kwargs"]  # GPU


def test_builtin_models_keep_the_mmo_engine() -> None:
    args = build_app_args(validate_file(ROOT / "manifests/samples/private-vqa.yaml").model, None)
    assert args.engine == "mmo" and args.vllm is None
    with pytest.raises(VllmArgsError, match="engine is 'mmo'; an LLMConfig is built for vllm"):
        llm_config(args)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("pvc://store/org/model", "/mnt/models/store/org/model"),
        ("hf://Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B"),
        ("s3://bucket/ds", {"bucket_uri": "s3://bucket/ds"}),
        ("file:///data/ckpt", "/data/ckpt"),
        ("/data/ckpt", "/data/ckpt"),
    ],
)
def test_model_source_is_where_the_pod_reads_it(source: str, expected: object) -> None:
    assert model_source(source) == expected


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("builtin://shapes-moe", "cannot be served by vLLM; valid: pvc://CLAIM/PATH"),
        ("https://example.com/w", "cannot be served by vLLM"),
        ("pvc:///path", "expected pvc://CLAIM/PATH"),
        ("pvc://claim/../etc", "expected pvc://CLAIM/PATH"),
    ],
)
def test_model_source_refuses_what_vllm_cannot_read(source: str, error: str) -> None:
    with pytest.raises(VllmArgsError, match=error.replace("(", r"\(")):
        model_source(source)


def test_app_args_round_trip_with_vllm_settings() -> None:
    args = _args(_with({"serving": {"vllm": {"engineArgs": {"enforce_eager": True}}}}))
    data = args.to_json_dict()
    assert data["vllm"]["engineArgs"] == {"enforce_eager": True}
    assert AppArgs.model_validate(data) == args


def test_mmo_sets_only_names_it_owns() -> None:
    doc = _with({"serving": {"vllm": {"maxModelLen": 4096, "all2allBackend": "naive"}}})
    for placement in ("balanced", "contiguous"):
        doc["spec"]["experts"]["placement"] = placement
        kw = llm_config(_args(doc))["engine_kwargs"]
        assert set(kw) <= set(OWNED_ENGINE_ARGS)


def test_the_kept_engine_argument_list_knows_every_owned_name() -> None:
    version, names = engine_arg_names()
    assert version == "0.29.0"
    assert set(OWNED_ENGINE_ARGS) <= names
    assert {"enforce_eager", "kv_cache_memory_bytes", "trust_remote_code"} <= names


@pytest.mark.parametrize(
    ("quantization", "gpu", "engine_value"),
    [
        ("awq-int4", "A100-80GB", None),  # read from the checkpoint's quantization_config
        ("w8a8-int8", "H200-141GB", None),
        ("experts-int8", "H200-141GB", "experts_int8"),  # quantized by vLLM on load
        ("fp8", "H200-141GB", "fp8"),
    ],
)
def test_quantization_formats_reach_vllm(quantization: str, gpu: str, engine_value: str) -> None:
    doc = _with({"resources": {"gpuType": gpu, "nodesPerReplica": 2}})  # 8-bit: 16 GPUs
    doc["spec"]["model"]["quantization"] = quantization
    kw = llm_config(_args(doc))["engine_kwargs"]
    assert kw.get("quantization") == engine_value
