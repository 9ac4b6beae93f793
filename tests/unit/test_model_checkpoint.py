"""Checkpoint save/load and every loader error (missing, truncated, mismatched files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmo_serving.model import tasks
from mmo_serving.model.checkpoint import (
    CheckpointError,
    load_model,
    resolve_source,
    save_checkpoint,
)
from mmo_serving.model.inference import answer_batch, embed_image
from mmo_serving.model.tokenizer import default_tokenizer
from mmo_serving.model.transformer import build_model

TOK = default_tokenizer()


@pytest.fixture
def ckpt(tmp_path, tiny_config) -> Path:
    return save_checkpoint(build_model(tiny_config(), seed=3), TOK, tmp_path / "ck")


def test_round_trip_gives_identical_outputs(ckpt, tiny_config) -> None:
    original = build_model(tiny_config(), seed=3).eval()
    model, tok, cfg = load_model(str(ckpt))
    assert cfg == tiny_config() and tok.vocab == TOK.vocab and not model.training
    for a, b in zip(original.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s = list(tasks.iter_samples(3, seed=4))
    qs = [x.qas[0].question for x in s]
    assert answer_batch(model, tok, [x.image for x in s], qs) == answer_batch(
        original, TOK, [x.image for x in s], qs
    )
    torch.testing.assert_close(
        embed_image(model, [s[0].image]), embed_image(original, [s[0].image])
    )


def test_sources_resolve(tmp_path, monkeypatch) -> None:
    assert resolve_source("builtin://shapes-moe").parts[-2:] == ("assets", "shapes-moe")
    monkeypatch.delenv("MMO_PVC_ROOT", raising=False)
    assert resolve_source("pvc://models/shapes/v1") == Path("/mnt/models/models/shapes/v1")
    monkeypatch.setenv("MMO_PVC_ROOT", str(tmp_path))
    assert resolve_source("pvc://claim/dir") == tmp_path / "claim" / "dir"
    assert resolve_source("file:///x/y") == Path("/x/y")
    assert resolve_source("/x/y") == Path("/x/y")


def test_pvc_source_loads_from_the_mount_root(ckpt, monkeypatch) -> None:
    monkeypatch.setenv("MMO_PVC_ROOT", str(ckpt.parent.parent))
    model, _, cfg = load_model(f"pvc://{ckpt.parent.name}/ck")
    assert cfg.d_model == 32 and len(model.moe_layers()) == 2


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "builtin://nope",
            "unknown builtin model 'nope' in 'builtin://nope'; valid: builtin://shapes-moe",
        ),
        ("s3://bucket/m", "unsupported model source scheme 's3'"),
        ("pvc://", "has no claim name; expected pvc://CLAIM/PATH"),
        ("pvc://c/../../etc", "must not contain '..'"),
        ("", "model source is empty"),
    ],
)
def test_bad_sources(source, message) -> None:
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(source)


def test_missing_directory_and_missing_files(ckpt, tmp_path) -> None:
    with pytest.raises(
        CheckpointError, match=r"checkpoint directory .*nowhere \(from '.*nowhere'\) does not exist"
    ):
        load_model(str(tmp_path / "nowhere"))
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"is missing model\.safetensors, tokenizer\.json"):
        load_model(str(ckpt))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="is not a directory"):
        load_model(str(f))


def test_truncated_weights(ckpt) -> None:
    w = ckpt / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"model.safetensors is truncated or corrupt \(\d+ bytes\)"
    ):
        load_model(str(ckpt))
    w.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(str(ckpt))


def test_weights_that_do_not_match_the_config(ckpt) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["d_expert"] = 20
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError,
        match=r"does not match .*config.json: shape mismatch blocks.0.moe.w_in: "
        r"file \(8, 32, 16\), config expects \(8, 32, 20\)",
    ):
        load_model(str(ckpt))
    cfg["d_expert"], cfg["n_layers"] = 16, 3
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing tensors \['blocks.2"):
        load_model(str(ckpt))
    cfg["n_layers"] = 1
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['blocks.1"):
        load_model(str(ckpt))


def test_bad_config_and_tokenizer_files(ckpt) -> None:
    good = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON"):
        load_model(str(ckpt))
    cfg = json.loads(good)
    cfg["n_expert"] = 8
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unknown keys \['n_expert'\]; valid keys:"):
        load_model(str(ckpt))
    cfg = json.loads(good)
    del cfg["vocab_size"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing required key 'vocab_size'"):
        load_model(str(ckpt))
    for key, value, message in (
        ("stem_channels", [32], r"stem_channels must be two positive integers, got \(32,\)"),
        ("stem_channels", "ab", r"stem_channels must be two positive integers"),
        ("shared_expert", -5, r"shared_expert must be an integer >= 0 \(0: none\), got -5"),
        ("aux_loss_weight", "x", r"aux_loss_weight must be a number >= 0, got 'x'"),
    ):
        cfg = {**json.loads(good), key: value}
        (ckpt / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=message):
            load_model(str(ckpt))
    cfg = json.loads(good)
    cfg["vocab_size"] += 1
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError,
        match=rf"has {len(TOK)} tokens but .*config.json says vocab_size={len(TOK) + 1}",
    ):
        load_model(str(ckpt))
    (ckpt / "config.json").write_text(good)
    (ckpt / "tokenizer.json").write_text("[]")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: not an mmo word tokenizer"):
        load_model(str(ckpt))
