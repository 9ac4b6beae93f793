"""Training of shapes-moe on the synthetic task (CPU friendly).

One training row per image packs four question segments and one caption segment behind
the image tokens (segments do not see each other, see ``transformer``), so the image is
encoded once for five targets. Loss = answer cross-entropy + contrastive image<->caption
loss (captions with the same text count as positives) + MoE load-balancing loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from mmo_serving.model import tasks
from mmo_serving.model.config import ModelConfig
from mmo_serving.model.preprocess import frame_of, preprocess, to_pil
from mmo_serving.model.tokenizer import WordTokenizer, default_tokenizer
from mmo_serving.model.transformer import Block, ShapesMoE, build_model


@dataclass
class TrainSettings:
    steps: int = 1600
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.02
    warmup: int = 60
    seed: int = 0
    contrastive_weight: float = 0.5
    dense_weight: float = 1.0
    lookup_weight: float = 0.5
    object_weight: float = 1.0
    questions_per_image: int = 6
    threads: int = 1  # 1 is fastest on a shared 2-core machine (2 threads oversubscribe)


@dataclass
class PackedBatch:
    images: torch.Tensor
    text_ids: torch.Tensor
    seg: torch.Tensor
    pos: torch.Tensor
    sees_image: torch.Tensor
    valid: torch.Tensor
    target_pos: torch.Tensor  # [N, 2] (row, position whose next token is a target)
    targets: torch.Tensor  # [N]
    caption_mask: torch.Tensor  # [B, T]
    captions: list[str] = field(default_factory=list)
    cell_colour: torch.Tensor | None = None  # [B, N] dense targets (tasks.cell_labels)
    cell_kind: torch.Tensor | None = None
    cell_centre: torch.Tensor | None = None
    # supervised lookups [M, 5]: (row, text position, 0 = <sep> / 1 = word, field (0 colour,
    # 1 kind), cell label)
    look: torch.Tensor | None = None
    objects: torch.Tensor | None = None  # [S, 3] (row, colour cell label, kind index)


def pack_samples(samples: list[tasks.Sample], tok: WordTokenizer, cfg: ModelConfig) -> PackedBatch:
    rows: list[tuple[list[int], list[int], list[int], list[bool], list[bool]]] = []
    tpos: list[tuple[int, int]] = []
    tgt: list[int] = []
    look: list[tuple[int, int, int, int, int]] = []
    for r, s in enumerate(samples):
        ids: list[int] = []
        seg: list[int] = []
        pos: list[int] = []
        sees: list[bool] = []
        cap: list[bool] = []
        for j, qa in enumerate(s.qas, start=1):
            q = tok.question_ids(qa.question, cfg.max_text_len - 2)
            a = tok.encode(qa.answer)
            start = len(ids)
            piece = [*q, *a, tok.eos_id]
            ids += piece
            seg += [j] * len(piece)
            pos += list(range(len(piece)))
            sees += [True] * len(piece)
            cap += [False] * len(piece)
            for k, t in enumerate([*a, tok.eos_id]):
                tpos.append((r, start + len(q) - 1 + k))
                tgt.append(t)
            colour = _looked_up_colour(qa)
            if colour is not None:
                look.append((r, start + len(q) - 1, 0, 0, 1 + tasks.COLOURS.index(colour)))
            for p, w in enumerate(q):
                word = tok.vocab[w]
                if word in tasks.COLOURS:
                    look.append((r, start + p, 1, 0, 1 + tasks.COLOURS.index(word)))
                elif word in tasks.SHAPES:
                    look.append((r, start + p, 1, 1, 1 + tasks.SHAPES.index(word)))
        c = tok.embed_ids(s.caption, cfg.max_text_len)
        ids += c
        seg += [len(s.qas) + 1] * len(c)
        pos += list(range(len(c)))
        sees += [False] * len(c)
        cap += [True] * len(c)
        rows.append((ids, seg, pos, sees, cap))
    t = max(len(r[0]) for r in rows)
    b = len(rows)
    text_ids = torch.full((b, t), tok.pad_id, dtype=torch.long)
    seg_t = torch.zeros(b, t, dtype=torch.long)
    pos_t = torch.zeros(b, t, dtype=torch.long)
    sees_t = torch.zeros(b, t, dtype=torch.bool)
    valid = torch.zeros(b, t, dtype=torch.bool)
    cap_t = torch.zeros(b, t, dtype=torch.bool)
    for i, (ids, seg, pos, sees, cap) in enumerate(rows):
        n = len(ids)
        text_ids[i, :n] = torch.tensor(ids)
        seg_t[i, :n] = torch.tensor(seg)
        pos_t[i, :n] = torch.tensor(pos)
        sees_t[i, :n] = torch.tensor(sees)
        valid[i, :n] = True
        cap_t[i, :n] = torch.tensor(cap)
    pictures = [to_pil(s.image) for s in samples]
    frames = [frame_of(p) for p in pictures]
    images = torch.stack(
        [preprocess(p, cfg.image_size, f) for p, f in zip(pictures, frames, strict=True)]
    )
    cells = [
        tasks.cell_labels(s.scene, cfg.grid, (f.left, f.top, f.side))
        for s, f in zip(samples, frames, strict=True)
    ]
    return PackedBatch(
        images,
        text_ids,
        seg_t,
        pos_t,
        sees_t,
        valid,
        torch.tensor(tpos, dtype=torch.long),
        torch.tensor(tgt, dtype=torch.long),
        cap_t,
        [s.caption for s in samples],
        torch.from_numpy(np.stack([c[0] for c in cells])),
        torch.from_numpy(np.stack([c[1] for c in cells])),
        torch.from_numpy(np.stack([c[2] for c in cells])),
        torch.tensor(look, dtype=torch.long).reshape(-1, 5),
        torch.tensor(
            [
                (r, 1 + tasks.COLOURS.index(sh.colour), tasks.SHAPES.index(sh.kind))
                for r, s in enumerate(samples)
                for sh in s.scene.shapes
            ],
            dtype=torch.long,
        ).reshape(-1, 3),
    )


def _looked_up_colour(qa: tasks.QA) -> str | None:
    """The colour of the one shape a question is about (colours are unique in a scene),
    or None when no single shape is (count questions, 'no' answers, kind-only checks)."""
    if qa.kind == "colour":
        return qa.answer
    words = WordTokenizer.words(qa.question)
    colour = next((w for w in words if w in tasks.COLOURS), None)
    if qa.kind == "shape" or (qa.kind == "exists" and qa.answer == "yes"):
        return colour
    return None


def _head_logits(
    blk: Block,
    x_in: torch.Tensor,
    rows: torch.Tensor,
    qpos: torch.Tensor,
    n: int,
    head: int,
) -> torch.Tensor:
    """Attention logits of one head from text queries (rows, qpos) to the n image keys."""
    x = blk.ln1(x_in)
    dh = blk.attn.head_dim
    d = x.shape[-1]
    w, bias = blk.attn.qkv.weight, blk.attn.qkv.bias
    sq, sk = slice(head * dh, (head + 1) * dh), slice(d + head * dh, d + (head + 1) * dh)
    q = F.linear(x[rows, n + qpos], w[sq], bias[sq])  # [M, dh]
    k = F.linear(x[rows, :n], w[sk], bias[sk])  # [M, n, dh]
    return torch.einsum("md,mnd->mn", q, k) / math.sqrt(dh)


def lookup_loss(
    model: ShapesMoE, hidden: list[torch.Tensor], batch: PackedBatch, n: int
) -> torch.Tensor:
    """Supervised attention. Each question's <sep> token (head 0 of blocks 1 and 2) should
    attend to the image cells of the shape the question is about; each colour or shape
    word of a question (head 1 of blocks 0 and 1) to the cells of that colour or kind.
    ``hidden[i]`` is the input of block i."""
    assert batch.look is not None and batch.cell_colour is not None and batch.cell_kind is not None
    total = []
    for kind, layers, head in ((0, (1, 2), 0), (1, (0, 1), 1)):
        sel = batch.look[batch.look[:, 2] == kind]
        rows, qpos, field, label = sel[:, 0], sel[:, 1], sel[:, 3], sel[:, 4]
        cells = torch.where(field[:, None] == 0, batch.cell_colour[rows], batch.cell_kind[rows])
        target = (cells == label[:, None]).float()  # [M, n]
        keep = target.sum(1) > 0
        if not bool(keep.any()):
            continue
        rows, qpos, target = rows[keep], qpos[keep], target[keep]
        target = target / target.sum(1, keepdim=True)
        for li in layers:
            if li < len(model.blocks) and head < model.config.n_heads:
                logits = _head_logits(
                    cast(Block, model.blocks[li]), hidden[li], rows, qpos, n, head
                )
                total.append(torch.sum(-target * F.log_softmax(logits, -1), -1).mean())
    return torch.stack(total).mean() if total else torch.zeros(())


N_DENSE = 1 + len(tasks.COLOURS) + 1 + len(tasks.SHAPES) + 1


def object_loss(
    hidden: list[torch.Tensor], batch: PackedBatch, n: int, head: torch.nn.Module
) -> torch.Tensor:
    """Each shape's kind from the mean of its cells' image tokens (after blocks 1..L):
    what an attention read-out over the shape's cells sees."""
    assert batch.objects is not None and batch.cell_colour is not None
    rows, colour, kind = batch.objects[:, 0], batch.objects[:, 1], batch.objects[:, 2]
    mask = (batch.cell_colour[rows] == colour[:, None]).float()  # [S, n]
    keep = mask.sum(1) > 0
    if not bool(keep.any()):
        return torch.zeros(())
    rows, kind, mask = rows[keep], kind[keep], mask[keep]
    mask = mask / mask.sum(1, keepdim=True)
    parts = []
    for hb in hidden[2:]:
        pooled = torch.einsum("sn,snd->sd", mask, hb[rows, :n])
        parts.append(F.cross_entropy(head(pooled), kind))
    return torch.stack(parts).mean()


def losses(
    model: ShapesMoE,
    batch: PackedBatch,
    dense_head: torch.nn.Module | None = None,
    object_head: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    blocks: list[torch.Tensor] = []
    h_img, h_txt = model.forward_packed(
        batch.images, batch.text_ids, batch.seg, batch.pos, batch.sees_image, batch.valid, blocks
    )
    assert h_img is not None
    out: dict[str, torch.Tensor] = {}
    if dense_head is not None and batch.cell_colour is not None:
        assert batch.cell_kind is not None and batch.cell_centre is not None
        # dense supervision of the image tokens after every block: what covers each cell
        n = h_img.shape[1]
        nc = 1 + len(tasks.COLOURS)
        parts = []
        for hb in blocks[1:]:
            logits = dense_head(hb[:, :n])
            parts.append(
                F.cross_entropy(logits[..., :nc].flatten(0, 1), batch.cell_colour.flatten())
                + F.cross_entropy(logits[..., nc:-1].flatten(0, 1), batch.cell_kind.flatten())
                + F.binary_cross_entropy_with_logits(logits[..., -1], batch.cell_centre)
            )
        out["dense"] = torch.stack(parts).mean()
        out["lookup"] = lookup_loss(model, blocks, batch, n)
        if object_head is not None and batch.objects is not None:
            out["object"] = object_loss(blocks, batch, n, object_head)
    h = h_txt[batch.target_pos[:, 0], batch.target_pos[:, 1]]
    qa = F.cross_entropy(model.lm_head(h), batch.targets)
    ie = model.image_embedding_from_hidden(h_img)
    te = model.text_embedding_from_hidden(h_txt, batch.caption_mask)
    scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
    sim = scale * ie @ te.t()
    same = torch.tensor(
        [[a == b for b in batch.captions] for a in batch.captions], dtype=torch.float32
    )
    target = same / same.sum(1, keepdim=True)
    contrastive = 0.5 * (
        torch.sum(-target * F.log_softmax(sim, 1), 1).mean()
        + torch.sum(-target * F.log_softmax(sim.t(), 1), 1).mean()
    )
    out.update({"qa": qa, "contrastive": contrastive, "aux": model.aux_loss()})
    return out


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    p = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def train(
    settings: TrainSettings,
    cfg: ModelConfig | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[ShapesMoE, WordTokenizer, dict[str, Any]]:
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    tok = default_tokenizer()
    cfg = cfg or ModelConfig(vocab_size=len(tok))
    model = build_model(cfg, seed=settings.seed)
    model.train()
    # training-only probe for the dense targets (not part of the checkpoint)
    dense_head = torch.nn.Linear(cfg.d_model, N_DENSE)
    object_head = torch.nn.Linear(cfg.d_model, len(tasks.SHAPES))
    named = [
        *model.named_parameters(),
        *(("dense." + n, p) for n, p in dense_head.named_parameters()),
        *(("object." + n, p) for n, p in object_head.named_parameters()),
    ]
    decay = [p for n, p in named if p.ndim >= 2 and "router" not in n]
    other = [p for n, p in named if not (p.ndim >= 2 and "router" not in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": other, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        betas=(0.9, 0.98),
    )
    t0 = time.perf_counter()
    ema: dict[str, float] = {}
    for step in range(settings.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, settings)
        first = step * settings.batch_size
        samples = [
            tasks.make_sample(first + i, settings.seed, "train", settings.questions_per_image)
            for i in range(settings.batch_size)
        ]
        batch = pack_samples(samples, tok, cfg)
        parts = losses(
            model,
            batch,
            dense_head if settings.dense_weight > 0 else None,
            object_head if settings.object_weight > 0 else None,
        )
        loss = (
            parts["qa"]
            + settings.contrastive_weight * parts["contrastive"]
            + cfg.aux_loss_weight * parts["aux"]
            + settings.dense_weight * parts.get("dense", torch.zeros(()))
            + settings.lookup_weight * parts.get("lookup", torch.zeros(()))
            + settings.object_weight * parts.get("object", torch.zeros(()))
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        for k, v in parts.items():
            x = float(v.detach())
            ema[k] = 0.95 * ema.get(k, x) + 0.05 * x
        if progress is not None:
            progress(step, dict(ema))
    model.eval()
    info = {
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "final_losses": {k: round(v, 4) for k, v in ema.items()},
    }
    return model, tok, info
