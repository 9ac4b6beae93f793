"""The capacity planner on two real cases (DeepSeek-V3 in int4 fits one 8-GPU node; a
trillion-parameter model in float16 does not), and its edge cases."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mmo_operator.api.parse import parse_model, read_document, resolve_architecture
from mmo_operator.api.problems import InvalidResource
from mmo_operator.api.v1alpha1 import Architecture
from mmo_operator.cli import main
from mmo_operator.planning.capacity import plan_capacity, split_params
from mmo_operator.validation import capacity_of, validate

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
    assert out["capacity"]["totalWeightBytes"] > 3.5e12
    assert out["capacity"]["gpuMemoryBytes"] == 80 * 10**9
    assert out["placement"] is None


def test_mmo_plan_json_on_deepseek(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-o", "json", str(ROOT / "manifests/samples/deepseek-v3-int4.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True
    assert out["capacity"]["bytesPerGpu"] > 0
    assert out["placement"]["numGpus"] == 8
    assert len(out["placement"]["layers"]) == 58


# --- suggestions that validation accepts ----------------------------------------------

SAMPLES = sorted((ROOT / "manifests/samples").glob("*.yaml"))


def _apply(doc: dict, changes: dict[str, object]) -> dict:
    """``doc`` with each ``spec`` field path of ``changes`` set to its value."""
    out = copy.deepcopy(doc)
    for path, value in changes.items():
        node = out["spec"]
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def _with(doc: dict, **sections: dict) -> dict:
    out = copy.deepcopy(doc)
    for name, fields in sections.items():
        out["spec"].setdefault(name, {}).update(fields)
    return out


def _too_big(arch: dict, **sections: dict) -> dict:
    doc = {
        "apiVersion": "serving.mmo.dev/v1alpha1",
        "kind": "MultimodalModel",
        "metadata": {"name": "too-big"},
        "spec": {"model": {"source": "pvc://models/m", "architecture": arch}},
    }
    return _with(doc, **sections)


TRILLION_ARCH = {
    "totalParams": 1_800_000_000_000,
    "activeParams": 37_000_000_000,
    "numLayers": 120,
    "numExperts": 128,
    "expertsPerToken": 2,
}
ODD_ARCH = {  # 160 experts: few GPU counts divide it
    "totalParams": 900_000_000_000,
    "activeParams": 30_000_000_000,
    "numLayers": 60,
    "numExperts": 160,
    "expertsPerToken": 6,
}


def _variants() -> list[tuple[str, dict]]:
    """The samples as they are and made too big for their GPUs, and synthetic models."""
    out: list[tuple[str, dict]] = []
    for path in SAMPLES:
        doc = read_document(path.read_text())
        out.append((path.name, doc))
        out.append((f"{path.name}/float32", _with(doc, model={"dtype": "float32"})))
        out.append(
            (f"{path.name}/bf16", _with(doc, model={"dtype": "bfloat16", "quantization": "none"}))
        )
    deepseek = read_document((ROOT / "manifests/samples/deepseek-v3-int4.yaml").read_text())
    for gpus in (3, 6, 7):
        out.append((f"deepseek/{gpus}gpus", _with(deepseek, resources={"gpusPerNode": gpus})))
    out.append(("deepseek/A100-40GB", _with(deepseek, resources={"gpuType": "A100-40GB"})))
    out.append(("deepseek/copies", _with(deepseek, experts={"redundantExperts": 800})))
    out.append(
        (
            "deepseek/roundRobin-bf16",
            _with(deepseek, model={"quantization": "none"}, experts={"placement": "roundRobin"}),
        )
    )
    for dtype in ("float16", "float32"):
        out.append((f"trillion/{dtype}", _too_big(TRILLION_ARCH, model={"dtype": dtype})))
    out.append(("odd/6gpus", _too_big(ODD_ARCH, resources={"gpusPerNode": 6})))
    out.append(("odd/L40S", _too_big(ODD_ARCH, resources={"gpuType": "L40S-48GB"})))
    out.append(("huge/float16", _too_big(HUGE_ARCH, model={"dtype": "float16"})))
    out.append(("huge/float32", _too_big(HUGE_ARCH, model={"dtype": "float32"})))
    return out


def test_every_suggestion_passes_validation() -> None:
    checked = 0
    for name, doc in _variants():
        model = parse_model(doc)
        report = capacity_of(model, resolve_architecture(model))
        for suggestion in report.suggestions:
            fixed = _apply(doc, suggestion.changes)
            try:
                validate(fixed)
            except InvalidResource as e:
                pytest.fail(f"{name}: suggestion {suggestion.text!r} is refused: {e}")
            checked += 1
    assert checked >= 25


def test_suggested_nodes_come_with_the_copies_balanced_placement_needs() -> None:
    doc = _with(
        read_document((ROOT / "manifests/samples/deepseek-v3-int4.yaml").read_text()),
        model={"quantization": "none"},
    )
    del doc["spec"]["serving"]["vllm"]  # no KV cache: weights only
    model = parse_model(doc)
    report = capacity_of(model, resolve_architecture(model))
    assert (
        "needs 6 nodes of 8×A100-80GB with redundantExperts 32 (balanced placement needs "
        "numExperts + redundantExperts divisible by the 48 GPUs)"
    ) in report.message
    assert report.suggestions[0].changes == {
        "resources.nodesPerReplica": 6,
        "experts.redundantExperts": 32,
    }
    # without balanced placement any count of copies works
    doc["spec"]["experts"]["placement"] = "roundRobin"
    model = parse_model(doc)
    report = capacity_of(model, resolve_architecture(model))
    assert "needs 6 nodes of 8×A100-80GB in bfloat16" in report.message
    assert report.suggestions[0].changes == {"resources.nodesPerReplica": 6}


HUGE_ARCH = {  # 2048 experts of 39 GB in float16: one per GPU, 256 nodes
    "totalParams": 40_000_000_000_000,
    "activeParams": 37_000_000_000,
    "numLayers": 120,
    "numExperts": 2048,
    "expertsPerToken": 2,
}


def test_no_suggestion_beyond_the_node_limit() -> None:
    huge = Architecture.model_validate(HUGE_ARCH)
    r = plan_capacity(
        huge, dtype="float16", quantization="none", gpu_type="A100-80GB", gpus_per_node=8
    )
    assert "needs 256 nodes of 8×A100-80GB, more than nodesPerReplica allows (64)" in r.message
    assert r.suggestions, "lower precisions still fit within 64 nodes"
    assert all(s.changes.get("resources.nodesPerReplica", 0) <= 64 for s in r.suggestions)


def test_an_expert_slot_larger_than_a_gpu_is_named() -> None:
    big_experts = Architecture.model_validate({**HUGE_ARCH, "numExperts": 128})
    r = plan_capacity(
        big_experts, dtype="float16", quantization="none", gpu_type="A100-80GB", gpus_per_node=8
    )
    assert "one expert slot (625.0 GB: one expert in each of the 120 MoE layers)" in r.message
    assert "the dense weights alone" not in r.message


def test_a_dtype_change_is_named_with_the_quantization() -> None:
    r = plan_capacity(
        DEEPSEEK, dtype="float32", quantization="none", gpu_type="A100-80GB", gpus_per_node=8
    )
    assert any(
        o.startswith("dtype bfloat16, quantization int4: fits on 1 node(s)") for o in r.options
    )


def test_most_redundant_copies_counts_distinct_gpus() -> None:
    # 8 experts of 6.4 GB on 8 GPUs: memory holds 9 slots a GPU (64 copies), but copies of
    # one expert sit on distinct GPUs, so at most 8 x 7 = 56
    small = Architecture(
        total_params=30_000_000_000,
        active_params=10_650_000_000,
        num_layers=32,
        num_experts=8,
        experts_per_token=2,
        hidden_size=4096,
        expert_intermediate_size=8192,
    )
    base = dict(dtype="bfloat16", quantization="none", gpu_type="A100-80GB", gpus_per_node=8)
    r = plan_capacity(small, redundant_experts=100, **base)
    assert r.max_slots_per_gpu * 8 - 8 > 56
    assert r.max_redundant_experts == 56
    assert "at most 56 redundant copies fit" in r.message
    assert "(copies of one expert sit on distinct GPUs)" in r.message
    assert [s.changes for s in r.suggestions] == [{"experts.redundantExperts": 56}]
    assert plan_capacity(small, redundant_experts=56, **base).fits
