"""Capacity from a Hugging Face checkpoint: architecture from config.json, real bytes from
the safetensors index, KV cache (MLA vs GQA), quantization formats, `mmo architecture`
and `mmo plan --checkpoint`. The fixtures in checkpoints/ carry the sizes of the public
config.json files of each model (weights are never read)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from mmo_operator.api.v1alpha1 import Architecture
from mmo_operator.cli import main
from mmo_operator.planning.capacity import kv_cache_bytes, plan_capacity
from mmo_operator.planning.checkpoint import (
    CheckpointConfigError,
    architecture_from_config,
    read_checkpoint,
)

HERE = Path(__file__).parent
CHECKPOINTS = HERE / "checkpoints"
ROOT = HERE.parents[1]
DEEPSEEK_SAMPLE = ROOT / "manifests/samples/deepseek-v3-int4.yaml"


@pytest.mark.parametrize(
    ("name", "total_b", "active_b", "moe_layers", "attention"),
    [
        # the parameter counts each model card states
        ("deepseek-v3", 671, 37, 58, "mla"),
        ("qwen3-30b-a3b", 30.5, 3.3, 48, "gqa"),
        ("qwen3-vl-30b-a3b", 31, 3.8, 48, "gqa"),
        ("mixtral-8x7b", 46.7, 12.9, 32, "gqa"),
        ("llama4-scout", 109, 17, 48, "gqa"),
    ],
)
def test_architecture_from_config_matches_the_published_sizes(
    name: str, total_b: float, active_b: float, moe_layers: int, attention: str
) -> None:
    info = read_checkpoint(CHECKPOINTS / name)
    arch = info.architecture
    assert arch.total_params / 1e9 == pytest.approx(total_b, rel=0.02)
    assert arch.active_params / 1e9 == pytest.approx(active_b, rel=0.07)
    assert arch.num_moe_layers == moe_layers
    assert arch.attention == attention


def test_family_specific_fields_are_read() -> None:
    ds = read_checkpoint(CHECKPOINTS / "deepseek-v3")
    assert (ds.architecture.num_experts, ds.architecture.shared_experts) == (256, 1)
    assert (ds.architecture.kv_lora_rank, ds.architecture.qk_rope_head_dim) == (512, 64)
    assert ds.quant_method == "fp8" and not ds.image
    vl = read_checkpoint(CHECKPOINTS / "qwen3-vl-30b-a3b")
    assert vl.image and vl.max_position_embeddings == 262144  # from text_config
    assert (vl.architecture.num_kv_heads, vl.architecture.head_dim) == (4, 128)
    scout = read_checkpoint(CHECKPOINTS / "llama4-scout").architecture
    assert (scout.num_experts, scout.experts_per_token, scout.shared_experts) == (16, 1, 1)


def test_dense_layers_are_not_counted_as_moe() -> None:
    cfg = json.loads((CHECKPOINTS / "qwen3-30b-a3b/config.json").read_text())
    cfg["mlp_only_layers"] = [0, 1]
    assert architecture_from_config(cfg)[0].num_moe_layers == 46
    cfg["mlp_only_layers"], cfg["decoder_sparse_step"] = [], 2
    assert architecture_from_config(cfg)[0].num_moe_layers == 24


def test_safetensors_index_gives_the_real_bytes(tmp_path: Path) -> None:
    shutil.copy(CHECKPOINTS / "qwen3-30b-a3b/config.json", tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 61_064_245_248}, "weight_map": {}})
    )
    info = read_checkpoint(tmp_path)
    assert info.weight_bytes == 61_064_245_248
    arch = info.architecture
    common = dict(dtype="bfloat16", quantization="none", gpu_type="A100-80GB", gpus_per_node=8)
    real = plan_capacity(arch, checkpoint_bytes=2 * info.weight_bytes, **common)
    assert real.total_weight_bytes == pytest.approx(2 * info.weight_bytes, rel=0.001)
    assert real.bytes_per_gpu > plan_capacity(arch, **common).bytes_per_gpu


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"model_type": "llama", "hidden_size": 8}, "no routed experts (n_routed_experts"),
        ({"num_experts": 8, "hidden_size": 8}, "missing 'num_hidden_layers'"),
    ],
)
def test_config_errors_say_what_is_missing(config: dict, error: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointConfigError, match=error.replace("(", r"\(")):
        read_checkpoint(tmp_path)


def test_unreadable_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointConfigError, match=re.escape("config.json: cannot read")):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(CheckpointConfigError, match="not valid JSON"):
        read_checkpoint(tmp_path)
    shutil.copy(CHECKPOINTS / "mixtral-8x7b/config.json", tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointConfigError, match=re.escape("no metadata.total_size")):
        read_checkpoint(tmp_path)


def test_kv_cache_mla_caches_one_latent_gqa_keys_and_values() -> None:
    mla = read_checkpoint(CHECKPOINTS / "deepseek-v3").architecture
    # 61 layers x (512 + 64) values x 2 bytes x 8192 tokens x 16 sequences
    assert kv_cache_bytes(mla, dtype="bfloat16", max_model_len=8192, max_seqs=16) == (
        61 * 576 * 2 * 8192 * 16
    )
    gqa = read_checkpoint(CHECKPOINTS / "qwen3-30b-a3b").architecture
    one = kv_cache_bytes(gqa, dtype="bfloat16", max_model_len=4096, max_seqs=1)
    assert one == 48 * 2 * 4 * 128 * 2 * 4096
    # key/value heads split over tensor-parallel GPUs, at most one head each
    assert (
        kv_cache_bytes(
            gqa, dtype="bfloat16", max_model_len=4096, max_seqs=1, tensor_parallel_size=2
        )
        == one // 2
    )
    assert (
        kv_cache_bytes(
            gqa, dtype="bfloat16", max_model_len=4096, max_seqs=1, tensor_parallel_size=8
        )
        == one // 4
    )
    assert kv_cache_bytes(mla, dtype="bfloat16", max_model_len=None, max_seqs=16) == 0
    plain = Architecture(
        total_params=10**9, active_params=10**8, num_layers=4, num_experts=8, experts_per_token=2
    )
    assert kv_cache_bytes(plain, dtype="bfloat16", max_model_len=4096, max_seqs=8) == 0


def test_experts_int8_keeps_the_dense_weights_in_dtype() -> None:
    arch = read_checkpoint(CHECKPOINTS / "qwen3-30b-a3b").architecture
    common = dict(dtype="bfloat16", gpu_type="A100-80GB", gpus_per_node=8)
    experts = plan_capacity(arch, quantization="experts-int8", **common)
    full = plan_capacity(arch, quantization="w8a8-int8", **common)
    plain = plan_capacity(arch, quantization="none", **common)
    assert experts.expert_bytes == full.expert_bytes == plain.expert_bytes // 2
    assert experts.dense_bytes == plain.dense_bytes > full.dense_bytes


def test_mmo_architecture_prints_the_block(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["architecture", str(CHECKPOINTS / "qwen3-vl-30b-a3b")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ") and "modalities [text, image]" in out.splitlines()[0]
    assert "quantization none or fp8 or experts-int8" in out.splitlines()[0]
    block = yaml.safe_load(out)["architecture"]
    assert block["numExperts"] == 128 and block["attention"] == "gqa"
    assert Architecture.model_validate(block, by_alias=True) == (
        read_checkpoint(CHECKPOINTS / "qwen3-vl-30b-a3b").architecture
    )


def test_mmo_architecture_refuses_a_dense_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["architecture", str(tmp_path)]) == 1
    assert "mmo serves Mixture-of-Experts models" in capsys.readouterr().err


def test_samples_carry_the_architecture_of_their_checkpoints() -> None:
    for sample, checkpoint in [
        ("deepseek-v3-int4", "deepseek-v3"),
        ("qwen3-vl-30b-a3b", "qwen3-vl-30b-a3b"),
    ]:
        doc = yaml.safe_load((ROOT / f"manifests/samples/{sample}.yaml").read_text())
        block = Architecture.model_validate(doc["spec"]["model"]["architecture"], by_alias=True)
        assert block == read_checkpoint(CHECKPOINTS / checkpoint).architecture


def _awq_copy(name: str, directory: Path) -> None:
    cfg = json.loads((CHECKPOINTS / name / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (directory / "config.json").write_text(json.dumps(cfg))


def test_plan_with_checkpoint_uses_its_architecture_and_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _awq_copy("deepseek-v3", tmp_path)
    assert main(["plan", str(DEEPSEEK_SAMPLE), "--checkpoint", str(tmp_path), "-o", "json"]) == 0
    computed = json.loads(capsys.readouterr().out)["capacity"]
    # a checkpoint twice as heavy as int4 weights would be (e.g. int8) no longer fits
    heavier = {"metadata": {"total_size": 2 * computed["totalWeightBytes"]}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(heavier))
    assert main(["plan", str(DEEPSEEK_SAMPLE), "--checkpoint", str(tmp_path)]) == 1
    assert "does not fit" in capsys.readouterr().out


def test_plan_with_a_bad_checkpoint_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(DEEPSEEK_SAMPLE), "--checkpoint", str(tmp_path)]) == 1
    assert "--checkpoint: " in capsys.readouterr().err


def test_plan_refuses_a_quantization_the_checkpoint_does_not_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(CHECKPOINTS / "deepseek-v3/config.json", tmp_path)  # the FP8 original
    assert main(["plan", str(DEEPSEEK_SAMPLE), "--checkpoint", str(tmp_path)]) == 1
    assert (
        "spec.model.quantization: the checkpoint has quantization_config fp8: use fp8, got awq-int4"
    ) in capsys.readouterr().err
