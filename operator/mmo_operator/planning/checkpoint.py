"""The ``architecture`` block of a MultimodalModel from a Hugging Face checkpoint directory.

Reads ``config.json`` (and ``model.safetensors.index.json``'s ``total_size``, the real
bytes of the weights, when present); never the weights. Families: DeepSeek-V2/V3
(``n_routed_experts``, multi-head latent attention), Qwen2/3-MoE
(``num_experts``, ``decoder_sparse_step``, ``mlp_only_layers``), Qwen3-VL-MoE and Llama 4
(the language model in ``text_config``), Mixtral (``num_local_experts``).

Parameter counts are computed from the sizes: attention, gated feed-forwards (three
matrices each), routers, embeddings and output head (one matrix when tied), and a
vision tower given by ``vision_config`` (blocks of attention and a two-matrix MLP).
Norms, biases and DeepSeek's multi-token-prediction layer (``num_nextn_predict_layers``,
not served) are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmo_operator.api.v1alpha1 import Architecture

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"


# spec.model.quantization values that fit a checkpoint's quantization_config.quant_method
# (an unquantized checkpoint may be quantized by vLLM on load: fp8, experts-int8)
QUANTIZATIONS_OF_METHOD: dict[str | None, tuple[str, ...]] = {
    None: ("none", "fp8", "experts-int8"),
    "awq": ("awq-int4",),
    "awq_marlin": ("awq-int4",),
    "gptq": ("gptq-int4",),
    "gptq_marlin": ("gptq-int4",),
    "fp8": ("fp8",),
    "compressed-tensors": ("w4a16", "w8a8-int8", "fp8"),
}


def quantization_problem(quant_method: str | None, quantization: str) -> str | None:
    """Why ``quantization`` does not describe a checkpoint of ``quant_method``, or None."""
    valid = QUANTIZATIONS_OF_METHOD.get(quant_method)
    if valid is None or quantization in valid:
        return None
    method = f"quantization_config {quant_method}" if quant_method else "no quantization_config"
    return f"the checkpoint has {method}: use {' or '.join(valid)}, got {quantization}"


class CheckpointConfigError(ValueError):
    """config.json cannot be read as a Mixture-of-Experts model; the message says why."""


@dataclass(frozen=True)
class CheckpointInfo:
    architecture: Architecture
    model_type: str
    weight_bytes: int | None  # total_size of the safetensors index
    quant_method: str | None  # quantization_config.quant_method
    max_position_embeddings: int | None
    image: bool  # has a vision tower


def _get(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    return default


def _moe_layers(text: dict[str, Any], layers: int) -> list[bool]:
    if "first_k_dense_replace" in text or "n_routed_experts" in text:  # DeepSeek
        first = int(text.get("first_k_dense_replace", 0))
        freq = int(text.get("moe_layer_freq", 1))
        return [i >= first and i % freq == 0 for i in range(layers)]
    if "interleave_moe_layer_step" in text:  # Llama 4
        step = int(text["interleave_moe_layer_step"])
        return [(i + 1) % step == 0 for i in range(layers)]
    step = int(text.get("decoder_sparse_step", 1))
    dense = set(text.get("mlp_only_layers") or [])
    return [i not in dense and (i + 1) % step == 0 for i in range(layers)]


def _attention(text: dict[str, Any], hidden: int) -> tuple[int, dict[str, Any]]:
    """(parameters of one attention block, the attention fields of Architecture)."""
    heads = int(text["num_attention_heads"])
    if text.get("kv_lora_rank"):
        rank, rope = int(text["kv_lora_rank"]), int(text["qk_rope_head_dim"])
        nope, v_dim = int(text["qk_nope_head_dim"]), int(text["v_head_dim"])
        q_rank = text.get("q_lora_rank")
        q = hidden * heads * (nope + rope)
        if q_rank:
            q = hidden * q_rank + q_rank * heads * (nope + rope)
        kv = hidden * (rank + rope) + rank * heads * (nope + v_dim)
        return q + kv + heads * v_dim * hidden, {
            "attention": "mla",
            "kv_lora_rank": rank,
            "qk_rope_head_dim": rope,
        }
    head_dim = int(_get(text, "head_dim", default=hidden // heads))
    kv_heads = int(_get(text, "num_key_value_heads", default=heads))
    params = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    return params, {"attention": "gqa", "num_kv_heads": kv_heads, "head_dim": head_dim}


def _vision_params(vision: dict[str, Any] | None) -> int:
    if not vision:
        return 0
    depth = int(_get(vision, "depth", "num_hidden_layers", default=0))
    width = int(_get(vision, "hidden_size", "embed_dim", default=0))
    inner = int(_get(vision, "intermediate_size", default=4 * width))
    out = int(_get(vision, "out_hidden_size", "projector_output_dim", default=width))
    return depth * (4 * width * width + 2 * width * inner) + width * out


def architecture_from_config(cfg: dict[str, Any]) -> tuple[Architecture, dict[str, Any]]:
    """The Architecture of a Hugging Face config, and the text config it came from."""
    text = cfg.get("text_config") or cfg
    experts = _get(text, "n_routed_experts", "num_experts", "num_local_experts")
    if not experts:
        raise CheckpointConfigError(
            f"{CONFIG}: no routed experts (n_routed_experts, num_experts or "
            f"num_local_experts) in model_type {cfg.get('model_type')!r}; mmo serves "
            "Mixture-of-Experts models"
        )
    try:
        hidden, layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
        vocab, top_k = int(text["vocab_size"]), int(text["num_experts_per_tok"])
        expert_inner = int(_get(text, "moe_intermediate_size", "intermediate_size"))
    except (KeyError, TypeError) as e:
        raise CheckpointConfigError(f"{CONFIG}: missing {e} in the language model's config") from e
    dense_inner = int(_get(text, "intermediate_size_mlp", "intermediate_size", default=0))
    shared = int(_get(text, "n_shared_experts", default=0))
    shared_inner = shared * expert_inner
    if text.get("shared_expert_intermediate_size"):  # Qwen2-MoE
        shared, shared_inner = 1, int(text["shared_expert_intermediate_size"])
    elif text.get("model_type", cfg.get("model_type", "")).startswith("llama4"):
        shared, shared_inner = 1, expert_inner  # one shared expert per MoE layer
    moe = _moe_layers(text, layers)
    moe_layers = sum(moe)
    attn, attention_fields = _attention(text, hidden)
    per_expert = 3 * hidden * expert_inner
    tied = bool(_get(cfg, "tie_word_embeddings", default=text.get("tie_word_embeddings", False)))
    dense = (
        vocab * hidden * (1 if tied else 2)
        + layers * attn
        + (layers - moe_layers) * 3 * hidden * dense_inner
        + moe_layers * (3 * hidden * shared_inner + hidden * int(experts))
        + _vision_params(cfg.get("vision_config"))
    )
    routed = moe_layers * int(experts) * per_expert
    arch = Architecture(
        total_params=dense + routed,
        active_params=dense + moe_layers * top_k * per_expert,
        num_layers=layers,
        num_moe_layers=moe_layers,
        num_experts=int(experts),
        experts_per_token=top_k,
        shared_experts=shared,
        hidden_size=hidden,
        expert_intermediate_size=expert_inner,
        vocab_size=vocab,
        **attention_fields,
    )
    return arch, text


def read_checkpoint(directory: str | Path) -> CheckpointInfo:
    root = Path(directory)
    path = root / CONFIG
    try:
        cfg = json.loads(path.read_text())
    except OSError as e:
        raise CheckpointConfigError(f"{path}: cannot read: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise CheckpointConfigError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointConfigError(f"{path}: expected a JSON object")
    arch, text = architecture_from_config(cfg)
    weight_bytes = None
    index = root / INDEX
    if index.is_file():
        try:
            weight_bytes = int(json.loads(index.read_text())["metadata"]["total_size"])
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise CheckpointConfigError(f"{index}: no metadata.total_size ({e})") from e
    quant = cfg.get("quantization_config") or text.get("quantization_config") or {}
    return CheckpointInfo(
        architecture=arch,
        model_type=str(cfg.get("model_type", "")),
        weight_bytes=weight_bytes,
        quant_method=quant.get("quant_method"),
        max_position_embeddings=_get(text, "max_position_embeddings"),
        image=bool(cfg.get("vision_config")),
    )


def architecture_yaml(arch: Architecture) -> dict[str, Any]:
    """The ``architecture:`` block as written in a MultimodalModel (camelCase, set fields)."""
    return {"architecture": arch.model_dump(by_alias=True, exclude_none=True)}
