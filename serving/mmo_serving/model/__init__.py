"""The built-in multimodal MoE model ``builtin://shapes-moe`` (torch).

Importing this package is light: names are loaded lazily (torch is imported by the
submodules that need it, so ``mmo_serving.model.commands`` and ``.tasks`` stay cheap).

Quick use::

    from mmo_serving.model import load_model, answer, embed_image, embed_text
    model, tok, cfg = load_model("builtin://shapes-moe")
    answer(model, tok, pil_or_uint8_array, "what colour is the circle?")  # -> "red"

Interface for the serving engine
--------------------------------
* ``load_model(source, device) -> (ShapesMoE, WordTokenizer, ModelConfig)``; sources
  ``builtin://shapes-moe``, ``pvc://CLAIM/PATH`` (``$MMO_PVC_ROOT``, default
  ``/mnt/models``), a local directory. Errors: ``CheckpointError`` (a ``ValueError``).
* Prompt building: ``preprocess(image, cfg.image_size) -> [3, S, S]``;
  ``inference.encode_questions(tok, questions, cfg.max_text_len)`` -> LEFT-padded ids and
  valid mask.
* ``model.prefill(images [B,3,S,S] | None, has_image [B] bool | None, ids [B,T],
  valid [B,T]) -> (logits [B,V], KVCache)``; then ``model.decode_step(tokens [B], cache)
  -> (logits [B,V], KVCache)`` once per generated token; stop a row at ``tok.eos_id``.
  ``inference.generate_ids`` is the reference loop (greedy).
* Embeddings: ``model.embed_images(x [B,3,S,S])``, ``model.embed_texts(ids, valid)``
  (right-padded ``<emb> words <eos>``), or ``embed_image(model, images)`` /
  ``embed_text(model, tok, texts)``: unit vectors [B, cfg.embed_dim].
* MoE layers: ``model.moe_layers()`` -> list of ``MoEFeedForward`` (one per block, in
  order; ``moe_layer_index`` 0..n-1). Each has ``router`` (float32 ``nn.Linear``),
  ``route(x2d) -> (topk_ids [T,k] long, topk_w [T,k] float32)``, stacked ``w_in [E,H,I]``,
  ``b_in [E,I]``, ``w_out [E,I,H]``, ``b_out [E,H]``, optional ``shared``, a
  ``dispatcher`` hook (``dispatcher(layer, x2d, topk_ids, topk_w) -> y2d`` replaces the
  local expert compute; the layer adds ``shared`` itself) and a ``route_hook``
  (``hook(layer, topk_ids, is_image)``, for per-expert token counts). The layer only sees
  real tokens (padding is removed before routing).
* ``grouped_expert_forward(x2d, topk_ids, topk_w, w_in, w_out, b_in, b_out,
  experts=[global ids held])`` computes the experts a rank holds (tokens sorted by
  expert, one matmul per expert group); tokens routed elsewhere contribute zero.
* INT8: ``quant.quantize_int8(model)`` swaps attention ``nn.Linear`` and the expert
  stacks for int8 weights (per output channel) with dynamic per-token int8 activations;
  quantized stacks implement ``expert_mm(i, x)`` and ``grouped_expert_forward`` accepts
  them in place of ``w_in``/``w_out``.
* ``build_model(ModelConfig(vocab_size=len(tok), ...))``: a random tiny model for tests.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ModelConfig": "config",
    "ConfigError": "config",
    "WordTokenizer": "tokenizer",
    "default_tokenizer": "tokenizer",
    "TokenizerError": "tokenizer",
    "ShapesMoE": "transformer",
    "KVCache": "transformer",
    "build_model": "transformer",
    "MoEFeedForward": "moe",
    "grouped_expert_forward": "moe",
    "dense_expert_forward": "moe",
    "preprocess": "preprocess",
    "ImageError": "preprocess",
    "load_model": "checkpoint",
    "save_checkpoint": "checkpoint",
    "resolve_source": "checkpoint",
    "CheckpointError": "checkpoint",
    "answer": "inference",
    "answer_batch": "inference",
    "answer_ids": "inference",
    "REFUSAL": "scope",
    "refusal_reason": "scope",
    "embed_image": "inference",
    "embed_text": "inference",
    "generate_ids": "inference",
    "quantize_int8": "quant",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Each name loads its own module on first use (most of them import torch)."""
    match _EXPORTS.get(name):
        case "checkpoint":
            from mmo_serving.model import checkpoint

            return getattr(checkpoint, name)
        case "config":
            from mmo_serving.model import config

            return getattr(config, name)
        case "inference":
            from mmo_serving.model import inference

            return getattr(inference, name)
        case "moe":
            from mmo_serving.model import moe

            return getattr(moe, name)
        case "preprocess":
            from mmo_serving.model import preprocess

            return getattr(preprocess, name)
        case "quant":
            from mmo_serving.model import quant

            return getattr(quant, name)
        case "scope":
            from mmo_serving.model import scope

            return getattr(scope, name)
        case "tokenizer":
            from mmo_serving.model import tokenizer

            return getattr(tokenizer, name)
        case "transformer":
            from mmo_serving.model import transformer

            return getattr(transformer, name)
    raise AttributeError(f"module 'mmo_serving.model' has no attribute {name!r}")
