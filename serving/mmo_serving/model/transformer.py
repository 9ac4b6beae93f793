"""The shapes-moe network: conv patch encoder + decoder blocks with routed-expert FFNs.

Sequence layout: ``[image tokens (grid*grid, optional)] [text tokens]``. Image tokens
attend to each other (bidirectionally); a text token attends to the image tokens (when
its segment "sees" the image) and causally to the earlier tokens of its own segment.
Training packs several segments per image (4 questions and one caption) into one row;
inference uses one segment (a question) per row, left-padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from mmo_serving.model.config import ModelConfig
from mmo_serving.model.moe import MoEFeedForward


@dataclass
class KVCache:
    """Per-layer keys/values [B, heads, L, head_dim], which keys are real, and the text
    position of the next token of each row."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_valid: torch.Tensor  # [B, L] bool
    next_pos: torch.Tensor  # [B] long

    @property
    def length(self) -> int:
        return int(self.key_valid.shape[1])


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, length, d = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, length, d)
        return self.proj(y), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, moe_index: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.moe = MoEFeedForward(
            cfg.d_model, cfg.d_expert, cfg.n_experts, cfg.top_k, moe_index, cfg.shared_expert
        )

    def forward(self, x, mask, valid, is_image, past=None):
        a, kv = self.attn(self.ln1(x), mask, past)
        x = x + a
        h = self.ln2(x)
        flat_valid = valid.reshape(-1)
        h2d = h.reshape(-1, h.shape[-1])[flat_valid]
        y2d = self.moe(h2d, is_image.reshape(-1)[flat_valid])
        y = torch.zeros_like(h).reshape(-1, h.shape[-1]).index_put((flat_valid,), y2d)
        return x + y.view_as(x), kv


class ShapesMoE(nn.Module):
    """See the package docstring for the interface the engine uses."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        c1, c2 = cfg.stem_channels
        d = cfg.d_model
        self.stem = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(c2, d, 3, stride=2, padding=1),
        )
        self.stem_refine = nn.ModuleList(
            nn.Conv2d(d, d, 3, padding=1) for _ in range(cfg.stem_refine)
        )
        self.stem_norm = nn.LayerNorm(d)
        self.img_pos = nn.Parameter(torch.randn(cfg.n_image_tokens, d) * 0.02)
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.txt_pos = nn.Embedding(cfg.max_text_len, d)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, cfg.vocab_size)
        self.img_proj = nn.Linear(d, cfg.embed_dim)
        self.txt_proj = nn.Linear(d, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.txt_pos.weight, std=0.02)

    # ---- structure -------------------------------------------------------------------
    def moe_layers(self) -> list[MoEFeedForward]:
        """The MoE feed-forwards, in order (``moe_layer_index`` 0..n_layers-1)."""
        return [cast(Block, blk).moe for blk in self.blocks]

    @property
    def device(self) -> torch.device:
        return self.img_pos.device

    @property
    def dtype(self) -> torch.dtype:
        return self.img_pos.dtype

    # ---- core ------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> image token embeddings [B, grid*grid, D]."""
        f = self.stem(images)
        for conv in self.stem_refine:
            f = f + conv(F.gelu(f))
        return self.stem_norm(f.flatten(2).transpose(1, 2)) + self.img_pos

    @staticmethod
    def attention_mask(
        is_img: torch.Tensor,
        seg: torch.Tensor,
        sees_image: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """Boolean mask [B, 1, L, L] for a full sequence (see the module docstring)."""
        length = is_img.shape[1]
        idx = torch.arange(length, device=is_img.device)
        causal = idx[None, :, None] >= idx[None, None, :]
        qi, ki = is_img[:, :, None], is_img[:, None, :]
        same = seg[:, :, None] == seg[:, None, :]
        img_keys = ki & (qi | sees_image[:, :, None])
        text_keys = ~ki & ~qi & same & causal
        allowed = valid[:, None, :] & (img_keys | text_keys)
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=is_img.device)[None]
        return allowed[:, None]

    def run(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        valid: torch.Tensor,
        is_img: torch.Tensor,
        past: KVCache | None = None,
        collect: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """All blocks, then the final norm. ``collect`` receives the input of the first
        block, then each block's output."""
        keys, values = [], []
        if collect is not None:
            collect.append(x)
        for i, blk in enumerate(self.blocks):
            p = (past.keys[i], past.values[i]) if past is not None else None
            x, (k, v) = blk(x, mask, valid, is_img, p)
            keys.append(k)
            values.append(v)
            if collect is not None:
                collect.append(x)
        return self.ln_f(x), keys, values

    def forward_packed(
        self,
        images: torch.Tensor | None,
        text_ids: torch.Tensor,
        seg: torch.Tensor,
        pos: torch.Tensor,
        sees_image: torch.Tensor,
        text_valid: torch.Tensor,
        collect: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Training / scoring forward. text tensors [B, T]; segment ids of text >= 1.
        Returns final hidden states (image [B, N, D] or None, text [B, T, D]);
        ``collect`` receives the blocks' input, then every block's output."""
        b = text_ids.shape[0]
        dev = text_ids.device
        tx = self.tok_emb(text_ids) + self.txt_pos(pos.clamp(max=self.config.max_text_len - 1))
        if images is not None:
            ix = self.encode_image(images)
            n = ix.shape[1]
            x = torch.cat([ix, tx], 1)
            is_img = torch.cat(
                [torch.ones(b, n, dtype=torch.bool, device=dev), torch.zeros_like(text_valid)], 1
            )
            seg_all = torch.cat([torch.zeros(b, n, dtype=seg.dtype, device=dev), seg], 1)
            sees = torch.cat([torch.ones(b, n, dtype=torch.bool, device=dev), sees_image], 1)
            valid = torch.cat([torch.ones(b, n, dtype=torch.bool, device=dev), text_valid], 1)
        else:
            n = 0
            x, is_img, seg_all, sees, valid = (
                tx,
                torch.zeros_like(text_valid),
                seg,
                sees_image,
                text_valid,
            )
        mask = self.attention_mask(is_img, seg_all, sees & (n > 0), valid)
        h, _, _ = self.run(x, mask, valid, is_img, collect=collect)
        return (h[:, :n] if n else None), h[:, n:]

    def aux_loss(self) -> torch.Tensor:
        losses = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
        return torch.stack(losses).mean() if losses else torch.zeros(())

    # ---- generation --------------------------------------------------------------------
    def prefill(
        self,
        images: torch.Tensor | None,
        has_image: torch.Tensor | None,
        text_ids: torch.Tensor,
        text_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, KVCache]:
        """Prompt step. ``images`` [B, 3, S, S] or None; ``has_image`` [B] bool (rows
        without an image get their image slots masked); ``text_ids`` [B, T] LEFT-padded
        (``text_valid`` marks real tokens). Returns next-token logits [B, V] and the cache."""
        b, t = text_ids.shape
        dev = text_ids.device
        pos = (text_valid.long().cumsum(1) - 1).clamp(min=0)
        seg = torch.ones_like(text_ids)
        if images is None:
            has_image = torch.zeros(b, dtype=torch.bool, device=dev)
        elif has_image is None:
            has_image = torch.ones(b, dtype=torch.bool, device=dev)
        sees = has_image[:, None].expand(b, t)
        tx = self.tok_emb(text_ids) + self.txt_pos(pos.clamp(max=self.config.max_text_len - 1))
        if images is not None:
            ix = self.encode_image(images)
            n = ix.shape[1]
            x = torch.cat([ix, tx], 1)
            is_img = torch.cat(
                [torch.ones(b, n, dtype=torch.bool, device=dev), torch.zeros_like(text_valid)], 1
            )
            seg_all = torch.cat([torch.zeros(b, n, dtype=seg.dtype, device=dev), seg], 1)
            sees_all = torch.cat([has_image[:, None].expand(b, n), sees], 1)
            valid = torch.cat([has_image[:, None].expand(b, n), text_valid], 1)
        else:
            x, is_img, seg_all, sees_all, valid = (
                tx,
                torch.zeros_like(text_valid),
                seg,
                sees,
                text_valid,
            )
        mask = self.attention_mask(is_img, seg_all, sees_all, valid)
        h, keys, values = self.run(x, mask, valid, is_img)
        logits = self.lm_head(h[:, -1])
        next_pos = text_valid.long().sum(1)
        return logits, KVCache(keys, values, valid, next_pos)

    def decode_step(self, tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One generated token per row: tokens [B] -> logits [B, V], updated cache."""
        b = tokens.shape[0]
        pos = cache.next_pos.clamp(max=self.config.max_text_len - 1)
        x = (self.tok_emb(tokens) + self.txt_pos(pos))[:, None]
        key_valid = torch.cat(
            [cache.key_valid, torch.ones(b, 1, dtype=torch.bool, device=tokens.device)], 1
        )
        mask = key_valid[:, None, None, :]
        valid = torch.ones(b, 1, dtype=torch.bool, device=tokens.device)
        h, keys, values = self.run(x, mask, valid, torch.zeros_like(valid), past=cache)
        return self.lm_head(h[:, -1]), KVCache(keys, values, key_valid, cache.next_pos + 1)

    # ---- embeddings ----------------------------------------------------------------------
    def image_embedding_from_hidden(self, h_img: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.img_proj(h_img.mean(1)), dim=-1)

    def text_embedding_from_hidden(self, h_txt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(h_txt.dtype)
        pooled = (h_txt * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(self.txt_proj(pooled), dim=-1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> unit vectors [B, embed_dim]."""
        b = images.shape[0]
        dev = images.device
        ix = self.encode_image(images)
        n = ix.shape[1]
        ones = torch.ones(b, n, dtype=torch.bool, device=dev)
        mask = self.attention_mask(
            ones, torch.zeros(b, n, dtype=torch.long, device=dev), ones, ones
        )
        h, _, _ = self.run(ix, mask, ones, ones)
        return self.image_embedding_from_hidden(h)

    def embed_texts(self, text_ids: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
        """Right-padded ``<emb> words <eos>`` ids [B, T] -> unit vectors [B, embed_dim]."""
        pos = torch.arange(text_ids.shape[1], device=text_ids.device).expand_as(text_ids)
        seg = torch.ones_like(text_ids)
        no = torch.zeros_like(text_valid)
        _, h = self.forward_packed(None, text_ids, seg, pos, no, text_valid)
        return self.text_embedding_from_hidden(h, text_valid)


def build_model(cfg: ModelConfig, seed: int | None = 0) -> ShapesMoE:
    """A randomly initialised model (for tests of other parts, and the start of training)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ShapesMoE(cfg)
    return ShapesMoE(cfg)
