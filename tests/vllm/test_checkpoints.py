"""The tiny random-weight checkpoints (tests/vllm/checkpoints.py) load in transformers and
decode greedily; their configs have the features the vLLM tests rely on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

# vLLM's CPU attention backend; other head sizes fail with "Unsupported CPU attention".
CPU_HEAD_SIZES = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors"}


@pytest.fixture(scope="module")
def built(
    vllm_run: Callable[..., dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    return vllm_run("run_checkpoints.py", tmp_path_factory.mktemp("checkpoints"), timeout=900)


def _answers_are_tokens(model: dict[str, Any], vocab: int) -> None:
    for ids in model["answers"]:
        assert ids, "greedy decoding produced nothing"
        assert all(0 <= i < vocab for i in ids), ids


def test_qwen3_moe(built: dict[str, Any]) -> None:
    m = built["qwen3_moe"]
    cfg = m["config"]
    assert m["class"] == "Qwen3MoeForCausalLM"
    assert set(m["files"]) >= MODEL_FILES | TOKENIZER_FILES
    # transformers 5 writes Qwen's num_experts under its common name num_local_experts
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["hidden_size"]) == (8, 2, 64)
    assert cfg["head_dim"] in CPU_HEAD_SIZES
    assert cfg["dtype"] == "float32"
    assert cfg["vocab_size"] == m["vocab"]  # the model can only emit tokens that decode
    _answers_are_tokens(m, cfg["vocab_size"])
    assert m["answers"][0] != m["answers"][1], "answers do not depend on the prompt"


def test_deepseek_v3(built: dict[str, Any]) -> None:
    m = built["deepseek_v3"]
    cfg = m["config"]
    assert m["class"] == "DeepseekV3ForCausalLM"
    assert set(m["files"]) >= MODEL_FILES | TOKENIZER_FILES
    assert cfg["topk_method"] == "noaux_tc" and cfg["scoring_func"] == "sigmoid"
    assert cfg["n_routed_experts"] % cfg["n_group"] == 0
    assert 0 < cfg["topk_group"] <= cfg["n_group"]
    assert cfg["first_k_dense_replace"] == 1 < cfg["num_hidden_layers"]
    assert cfg["q_lora_rank"] and cfg["kv_lora_rank"]
    # MLA: q/k heads are nope + rope, the cached latent is kv_lora_rank + rope
    assert cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"] in CPU_HEAD_SIZES
    assert cfg["v_head_dim"] in CPU_HEAD_SIZES
    # the only latent size vLLM's CPU MLA kernel accepts (DeepSeek's own 512 + 64)
    assert cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"] == 576
    _answers_are_tokens(m, cfg["vocab_size"])


def test_qwen3_vl_moe_reads_the_image(built: dict[str, Any]) -> None:
    m = built["qwen3_vl_moe"]
    cfg = m["config"]
    assert m["class"] == "Qwen3VLMoeForConditionalGeneration"
    assert MODEL_FILES | TOKENIZER_FILES | {"preprocessor_config.json"} <= set(m["files"])
    text = cfg["text_config"]
    assert (text["num_local_experts"], text["num_experts_per_tok"]) == (8, 2)
    assert text["head_dim"] in CPU_HEAD_SIZES
    _answers_are_tokens(m, text["vocab_size"])
    assert m["answers"][0] != m["answers"][1], "the same answer for two different images"


def test_generation_is_reproducible(built: dict[str, Any]) -> None:
    assert built["same_seed_same_weights"]


def test_qwen3_vl_moe_stops_at_torchvision_in_vllms_cpu_build(built: dict[str, Any]) -> None:
    """The boundary of the CPU tests: vLLM's multimodal model modules import torchvision,
    which has no CPU build on the package index. ``mmo up`` says so before Ray starts
    instead of a replica failing inside Serve; once vLLM imports the module, the CPU
    build can serve images and this test (and mmo up's check) must change."""
    vl = built["qwen3_vl_moe_in_vllm"]
    assert vl["vllm_module"] == "ModuleNotFoundError: No module named 'torchvision'"
    assert vl["up_exit"] == 1
    assert (
        vl["up_err"]
        .strip()
        .splitlines()[-1]
        .startswith(
            "mmo up: engine vllm cannot load tiny-qwen3-vl-moe here: vLLM's multimodal models "
            "import torchvision"
        )
    )
