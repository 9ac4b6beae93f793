"""The capacity planner on the two real cases of the issue, and its edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmo_operator.api.v1alpha1 import Architecture
from mmo_operator.cli import main
from mmo_operator.planning.capacity import plan_capacity, split_params

ROOT = Path(__file__).resolve().parents[2]
DEEPSEEK = Architecture(
    total_params=671_000_000_000,
    active_params=37_000_000_000,
    num_layers=61,
    num_moe_layers=58,
    num_experts=256,
    experts_per_token=8,
    shared_experts=1,
    hidden_size=7168,
    expert_intermediate_size=2048,
    vocab_size=129280,
)
TRILLION = Architecture(
    total_params=1_800_000_000_000,
    active_params=37_000_000_000,
    num_layers=120,
    num_experts=128,
    experts_per_token=2,
)


def test_deepseek_v3_int4_fits_on_one_node() -> None:
    r = plan_capacity(
        DEEPSEEK, dtype="bfloat16", quantization="int4", gpu_type="A100-80GB", gpus_per_node=8
    )
    assert r.fits
    # 58 layers x 256 experts x 3 x 7168 x 2048 routed params, 0.5156 bytes each
    routed = 58 * 256 * 3 * 7168 * 2048
    assert r.slot_bytes * 256 == pytest.approx(routed * (0.5 + 2 / 128), rel=1e-3)
    assert r.slots_needed_per_gpu == 32
    assert 45e9 < r.bytes_per_gpu < 68e9
    assert r.warnings == []  # details agree with the totals


def test_deepseek_v3_bf16_does_not_fit_and_suggests_int4() -> None:
    r = plan_capacity(
        DEEPSEEK, dtype="bfloat16", quantization="none", gpu_type="A100-80GB", gpus_per_node=8
    )
    assert not r.fits
    # dense 17B x 2 B = 34 GB per GPU leaves 34 GB: 6 slots of 5.1 GB; 256 experts -> 43 GPUs
    assert "needs 6 nodes of 8×A100-80GB" in r.message
    assert any(o.startswith("quantization int4: fits on 1 node") for o in r.options)


def test_trillion_float16_does_not_fit_with_byte_figures() -> None:
    r = plan_capacity(
        TRILLION, dtype="float16", quantization="none", gpu_type="A100-80GB", gpus_per_node=8
    )
    assert not r.fits
    assert r.total_weight_bytes == pytest.approx(3.6e12, rel=0.01)
    assert r.gpu_memory_bytes * r.gpus == 640 * 10**9
    assert "3.6 TB of weights against 640.0 GB" in r.message
    assert "needs 16 nodes" in r.message
    assert "quantization int4: 2 nodes of 8×A100-80GB" in r.options


def test_disagreeing_totals_are_reported() -> None:
    wrong = DEEPSEEK.model_copy(update={"active_params": 20_000_000_000})
    (warning,) = split_params(wrong).warnings
    assert "implies 37.5B active parameters" in warning
    assert "activeParams is 20.0B" in warning


def test_dense_weights_larger_than_a_gpu() -> None:
    dense = Architecture(
        total_params=200_000_000_000,
        active_params=199_000_000_000,
        num_layers=10,
        num_experts=8,
        experts_per_token=7,
    )
    r = plan_capacity(
        dense, dtype="bfloat16", quantization="none", gpu_type="L40S-48GB", gpus_per_node=8
    )
    assert not r.fits
    assert "the dense weights alone" in r.message


def test_redundant_copies_cost_memory() -> None:
    base = dict(dtype="bfloat16", quantization="int4", gpu_type="A100-80GB", gpus_per_node=8)
    r0 = plan_capacity(DEEPSEEK, **base)
    r1 = plan_capacity(DEEPSEEK, redundant_experts=64, **base)
    assert r1.bytes_per_gpu - r0.bytes_per_gpu == 8 * r0.slot_bytes
    assert r0.max_redundant_experts == (r0.max_slots_per_gpu * 8) - 256


def test_mmo_plan_json_on_the_trillion_case(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).parent / "invalid" / "too-big.yaml"
    assert main(["plan", "-o", "json", str(path)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is False
    assert out["capacity"]["total_weight_bytes"] > 3.5e12
    assert out["capacity"]["gpu_memory_bytes"] == 80 * 10**9
    assert out["placement"] is None


def test_mmo_plan_json_on_deepseek(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-o", "json", str(ROOT / "manifests/samples/deepseek-v3-int4.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True
    assert out["capacity"]["bytes_per_gpu"] > 0
    assert out["placement"]["numGpus"] == 8
    assert len(out["placement"]["layers"]) == 58
