"""INT8 quantization (size, closeness to float32) and routing statistics."""

from __future__ import annotations

import copy

import pytest
import torch

from mmo_serving.model import tasks
from mmo_serving.model.config import ModelConfig
from mmo_serving.model.evaluate import RoutingRecorder, qa_accuracy
from mmo_serving.model.inference import embed_image
from mmo_serving.model.moe import MoEFeedForward, grouped_expert_forward
from mmo_serving.model.quant import (
    Int8ExpertStack,
    Int8Linear,
    int8_matmul,
    quantize_int8,
    quantize_weight,
    quantized_bytes,
)
from mmo_serving.model.tokenizer import default_tokenizer
from mmo_serving.model.transformer import build_model

TOK = default_tokenizer()


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(
        vocab_size=len(TOK),
        d_model=64,
        n_layers=2,
        n_heads=2,
        n_experts=8,
        top_k=2,
        d_expert=64,
        image_size=16,
        stem_channels=(8, 8),
        embed_dim=16,
    )
    return build_model(cfg, seed=5).eval()


def test_weight_quantization_error_is_within_half_a_step() -> None:
    w = torch.randn(64, 32)
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.shape == (32,)
    assert float((q.float() * s - w).abs().max()) <= float(s.max()) / 2 + 1e-6


@pytest.mark.parametrize("rows", [1, 5, 16, 17, 100])
def test_int8_matmul_is_close_to_float(rows) -> None:
    torch.manual_seed(rows)
    x, w = torch.randn(rows, 64), torch.randn(64, 48)
    q, s = quantize_weight(w)
    y = int8_matmul(x, q, s)
    ref = x @ w
    assert y.shape == ref.shape
    assert float((y - ref).norm() / ref.norm()) < 0.02


def test_quantize_replaces_attention_and_experts_but_not_routers(model) -> None:
    q = quantize_int8(copy.deepcopy(model))
    for blk in q.blocks:
        assert isinstance(blk.attn.qkv, Int8Linear) and isinstance(blk.attn.proj, Int8Linear)
        assert isinstance(blk.moe.w_in, Int8ExpertStack) and isinstance(
            blk.moe.w_out, Int8ExpertStack
        )
        assert blk.moe.router.weight.dtype == torch.float32
    now, fp32 = quantized_bytes(q)
    assert fp32 > 0 and now / fp32 <= 0.3


def test_quantized_model_stays_close_to_float(model) -> None:
    q = quantize_int8(copy.deepcopy(model))
    samples = list(tasks.iter_samples(8, seed=2, split="val"))
    a = embed_image(model, [s.image for s in samples])
    b = embed_image(q, [s.image for s in samples])
    assert float((a * b).sum(-1).min()) > 0.98  # cosine similarity of unit vectors


def test_grouped_forward_accepts_quantized_stacks() -> None:
    torch.manual_seed(0)
    layer = MoEFeedForward(32, 48, 8, 2).eval()
    x = torch.randn(40, 32)
    ids, w = layer.route(x)
    ref = grouped_expert_forward(x, ids, w, layer.w_in, layer.w_out, layer.b_in, layer.b_out)
    qi, qo = Int8ExpertStack(layer.w_in.data), Int8ExpertStack(layer.w_out.data)
    assert qi.shape == (8, 32, 48)
    got = grouped_expert_forward(x, ids, w, qi, qo, layer.b_in, layer.b_out)
    assert float(((got - ref).norm() / ref.norm()).detach()) < 0.03


def test_routing_recorder_counts_every_routed_token_by_modality(model) -> None:
    samples = list(tasks.iter_samples(5, seed=1, split="val"))
    with RoutingRecorder(model) as rec:
        qa_accuracy(model, TOK, samples)
    out = rec.to_json()
    assert len(out["layers"]) == 2 and all(len(r) == 8 for r in out["layers"])
    n_img = model.config.n_image_tokens
    # prefill: every question row routes its image tokens, top-2 per token, in every layer
    questions = sum(len(s.qas) for s in samples)
    assert sum(out["by_modality"]["image"][0]) == questions * n_img * 2
    assert sum(out["by_modality"]["text"][0]) > 0
    for i in range(2):
        assert [
            a + b
            for a, b in zip(
                out["by_modality"]["image"][i], out["by_modality"]["text"][i], strict=True
            )
        ] == out["layers"][i]
    assert all(m.route_hook is None for m in model.moe_layers())  # removed on exit
