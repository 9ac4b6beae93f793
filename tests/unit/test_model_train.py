"""Training pieces: packed batches, dense/lookup/object targets, a few optimizer steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmo_serving.model import tasks
from mmo_serving.model.preprocess import frame_of, preprocess_array, to_pil
from mmo_serving.model.tokenizer import default_tokenizer
from mmo_serving.model.train import N_DENSE, TrainSettings, losses, pack_samples, train
from mmo_serving.model.transformer import build_model

TOK = default_tokenizer()


@pytest.fixture(scope="module")
def train_config(tiny_config):
    """Three layers and 32 px images: enough for the training-only heads."""
    return tiny_config(n_layers=3, image_size=32, stem_channels=(8, 16))


def test_packed_rows_hold_each_question_and_answer_in_its_own_segment(train_config) -> None:
    samples = list(tasks.iter_samples(3, seed=5))
    b = pack_samples(samples, TOK, train_config)
    assert b.images.shape == (3, 3, 32, 32)
    # every target follows its <sep> (answer) or its answer (<eos>)
    for (r, p), t in zip(b.target_pos.tolist(), b.targets.tolist(), strict=True):
        prev = TOK.vocab[int(b.text_ids[r, p])]
        assert (prev == "<sep>" and TOK.vocab[t] not in ("<eos>",)) or TOK.vocab[t] == "<eos>"
    answers = [TOK.vocab[t] for t in b.targets.tolist() if t != TOK.eos_id]
    assert answers == [qa.answer for s in samples for qa in s.qas]
    # the caption segment does not see the image; question segments do
    assert not bool((b.sees_image & b.caption_mask).any())
    assert bool(b.sees_image[b.valid & ~b.caption_mask].all())


def test_cell_labels_follow_the_drawn_pixels() -> None:
    grid = 8
    for i in range(20):
        s = tasks.make_sample(i, seed=11)
        frame = frame_of(to_pil(s.image))
        colour, kind, centre = tasks.cell_labels(s.scene, grid, (frame.left, frame.top, frame.side))
        arr = preprocess_array(s.image, grid * 8).astype(int)
        assert int(centre.sum()) == len(s.scene.shapes)  # shape centres lie cells apart
        for cell in np.flatnonzero(colour):
            gy, gx = divmod(int(cell), grid)
            patch = arr[gy * 8 : gy * 8 + 8, gx * 8 : gx * 8 + 8].reshape(-1, 3)
            sh = next(
                x for x in s.scene.shapes if 1 + tasks.COLOURS.index(x.colour) == colour[cell]
            )
            assert 1 + tasks.SHAPES.index(sh.kind) == kind[cell]
            # at least some pixels of the cell are close to the shape's colour
            assert (np.abs(patch - np.array(sh.rgb)).sum(1) < 90).any()


def test_losses_are_finite_and_a_few_steps_reduce_them(train_config) -> None:
    torch.manual_seed(0)
    cfg = train_config
    model = build_model(cfg, seed=0).train()
    dense = torch.nn.Linear(cfg.d_model, N_DENSE)
    obj = torch.nn.Linear(cfg.d_model, len(tasks.SHAPES))
    batch = pack_samples(list(tasks.iter_samples(8, seed=2)), TOK, cfg)
    params = [*model.parameters(), *dense.parameters(), *obj.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    first = None
    for _ in range(15):
        parts = losses(model, batch, dense, obj)
        assert set(parts) == {"dense", "lookup", "object", "qa", "contrastive", "aux"}
        total = sum(parts.values())
        assert torch.isfinite(total)
        first = first if first is not None else {k: float(v.detach()) for k, v in parts.items()}
        opt.zero_grad()
        total.backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in losses(model, batch, dense, obj).items()}
    for k in ("qa", "dense", "lookup", "object"):
        assert last[k] < first[k], (k, first[k], last[k])


def test_train_runs_and_returns_an_eval_mode_model(train_config) -> None:
    model, tok, info = train(TrainSettings(steps=2, batch_size=2), cfg=train_config)
    assert not model.training and info["steps"] == 2 and len(tok) == len(TOK)
