"""Tiny random-weight MoE checkpoints, generated at test time (no download).

Each ``make_*`` function writes a Hugging Face checkpoint into a directory: ``config.json``,
``model.safetensors``, ``generation_config.json`` and a tokenizer built here (byte-level BPE
over printable ASCII, Qwen-style chat template). Only :mod:`transformers`, :mod:`tokenizers`
and :mod:`torch` are needed (``.venv-vllm``).

The sizes are the smallest the CPU engine accepts: vLLM's CPU attention backend supports
head sizes 32, 64, 80, 96, 112, 128, 160, 192, 224, 256 and 512 only. The model vocabulary
is exactly the tokenizer's, so a random model can only emit tokens that decode to ASCII
text (incremental and whole decoding then agree).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
TEXT_SPECIALS = (END_OF_TEXT, IM_START, IM_END)
VISION_SPECIALS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

# Qwen's template reduced to text and images: string content or a list of text/image parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] in ('image', 'image_url') -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Larger than the usual 0.02: random logits then differ by more than float rounding, so
# greedy decoding is the same in every engine and answers vary with the prompt.
INIT_STD = 0.2

# A few merges, so that words are not always single characters.
_MERGES = ("Ġ t", "Ġ a", "h e", "i n", "Ġt he", "e r", "o n", "Ġ s", "e n", "a t")


def _byte_vocab() -> list[str]:
    """Byte-level symbols of printable ASCII, tab and newline (GPT-2's byte->char map)."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = set(ByteLevel.alphabet())
    symbols = []
    for b in [9, 10, *range(32, 127)]:
        ch = chr(b) if 33 <= b <= 126 else chr(256 + b if b < 33 else b)
        # GPT-2 maps bytes outside printable Latin-1 to 256 + n in order; for the bytes
        # used here that is: 9 -> 'ĉ', 10 -> 'Ċ', 32 -> 'Ġ'.
        assert ch in alphabet, (b, ch)
        symbols.append(ch)
    return symbols


def build_tokenizer(vision: bool = False) -> Any:
    """A ``PreTrainedTokenizerFast`` with special tokens first, then bytes, then merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(TEXT_SPECIALS) + (list(VISION_SPECIALS) if vision else [])
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(specials)}
    for sym in _byte_vocab():
        vocab[sym] = len(vocab)
    merges = [tuple(m.split(" ")) for m in _MERGES]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        additional_special_tokens=specials[1:],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    return fast


def _save(model: Any, tokenizer: Any, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _token_ids(tokenizer: Any) -> dict[str, int]:
    eos = tokenizer.convert_tokens_to_ids(IM_END)
    pad = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    return {"eos_token_id": eos, "pad_token_id": pad, "bos_token_id": pad}


def make_qwen3_moe(out: Path, seed: int = 0) -> Path:
    """Qwen3-MoE: hidden 64, 4 heads of 32 (2 KV heads), 8 experts, top-2, 2 layers."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tokenizer = build_tokenizer()
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=8,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        norm_topk_prob=True,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=INIT_STD,
        dtype="float32",
        **_token_ids(tokenizer),
    )
    _seed(seed)
    model = Qwen3MoeForCausalLM(config).to(torch.float32).eval()
    return _save(model, tokenizer, out)


def make_deepseek_v3(out: Path, seed: int = 0, **overrides: Any) -> Path:
    """DeepSeek-V3: MLA (q/kv LoRA ranks, rope and nope head parts), ``noaux_tc`` routing
    over 2 groups of 4 experts (top-2 groups, top-2 experts), one shared expert, the first
    layer dense (``first_k_dense_replace=1``), 2 layers. ``overrides`` replace config
    fields.

    Head sizes: q/k = 64 nope + 64 rope = 128, v = 64; the MLA latent (kv_lora_rank + rope)
    is 512 + 64 = 576, DeepSeek's own and the only size vLLM's CPU MLA kernel accepts.
    """
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    tokenizer = build_tokenizer()
    kwargs: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 32,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 64,
        "qk_rope_head_dim": 64,
        "v_head_dim": 64,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "n_group": 2,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "routed_scaling_factor": 2.5,
        "norm_topk_prob": True,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "initializer_range": INIT_STD,
        "dtype": "float32",
        **_token_ids(tokenizer),
    }
    config = DeepseekV3Config(**{**kwargs, **overrides})
    _seed(seed)
    model = DeepseekV3ForCausalLM(config).to(torch.float32).eval()
    _randomise_correction_bias(model)
    return _save(model, tokenizer, out)


def _randomise_correction_bias(model: Any) -> None:
    """``noaux_tc`` adds ``e_score_correction_bias`` to the scores when choosing experts;
    it starts at zero: make it matter."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("e_score_correction_bias"):
                param.uniform_(-0.1, 0.1)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.uniform_(-0.1, 0.1)


VL_PATCH = 16
VL_MERGE = 2


def make_qwen3_vl_moe(out: Path, seed: int = 0) -> Path:
    """Qwen3-VL-MoE: the Qwen3-MoE text tower above (multimodal rope over 16 frequency
    pairs) and a 2-block vision tower (patch 16, 2x2 merge, one deepstack level).

    The image processor saved is the PIL one (the full processor's video part needs
    torchvision, absent from the CPU venv); :func:`vl_inputs` builds the model inputs.
    """
    import torch
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tokenizer = build_tokenizer(vision=True)
    ids = _token_ids(tokenizer)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 512,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [6, 5, 5],
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": False,
        "initializer_range": INIT_STD,
        **ids,
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "patch_size": VL_PATCH,
        "spatial_merge_size": VL_MERGE,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [1],
    }
    config = Qwen3VLMoeConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PAD),
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_PAD),
        vision_start_token_id=tokenizer.convert_tokens_to_ids(VISION_START),
        vision_end_token_id=tokenizer.convert_tokens_to_ids(VISION_END),
        dtype="float32",
        **ids,
    )
    _seed(seed)
    model = Qwen3VLMoeForConditionalGeneration(config).to(torch.float32).eval()
    _save(model, tokenizer, out)
    side = VL_PATCH * VL_MERGE
    Qwen2VLImageProcessorPil(
        patch_size=VL_PATCH,
        merge_size=VL_MERGE,
        temporal_patch_size=2,
        size={"shortest_edge": (2 * side) ** 2, "longest_edge": (4 * side) ** 2},
    ).save_pretrained(out)
    return out


def vl_inputs(checkpoint: Path, messages: list[dict[str, Any]], images: list[Any]) -> Any:
    """Model inputs for a Qwen3-VL-MoE checkpoint: the chat template rendered, each image
    placeholder expanded to the image's merged patch count, the images' pixel values."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint)
    pixels = processor(images=images, return_tensors="pt")
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    for grid in pixels["image_grid_thw"]:
        n = int(grid.prod()) // VL_MERGE**2
        prompt = prompt.replace(IMAGE_PAD, "<|placeholder|>" * n, 1)
    prompt = prompt.replace("<|placeholder|>", IMAGE_PAD)
    enc = tokenizer(prompt, return_tensors="pt")
    return {**enc, **pixels}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def greedy_answers(checkpoint: Path, prompts: Any, max_tokens: int) -> list[dict[str, Any]]:
    """transformers' greedy answers to one-message chats: the generated token ids, their
    text, the prompt's length and the special ids (which have no text)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    out = []
    for prompt in prompts:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        gen = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False)
        ids = gen[0, enc["input_ids"].shape[1] :].tolist()
        out.append(
            {
                "ids": ids,
                "text": tok.decode(ids, skip_special_tokens=True),
                "prompt_tokens": int(enc["input_ids"].shape[1]),
                "specials": tok.all_special_ids,
            }
        )
    return out
