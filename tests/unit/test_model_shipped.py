"""The shipped checkpoint ``builtin://shapes-moe`` and the ``mmo train`` / ``mmo eval``
commands (on tiny settings)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmo_serving.model import tasks
from mmo_serving.model.checkpoint import load_model, resolve_source
from mmo_serving.model.commands import register
from mmo_serving.model.evaluate import qa_accuracy, retrieval_recall
from mmo_serving.model.inference import answer_batch

SHIPPED = resolve_source("builtin://shapes-moe")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmo")
    register(p.add_subparsers(dest="command", required=True))
    return p


@pytest.fixture(scope="module")
def shipped():
    return load_model("builtin://shapes-moe")


def test_shipped_checkpoint_is_small_and_complete() -> None:
    sizes = {
        f: (SHIPPED / f).stat().st_size
        for f in ("model.safetensors", "config.json", "tokenizer.json")
    }
    assert sum(sizes.values()) <= 10 * 1024 * 1024


def test_shipped_model_has_at_least_8_experts_per_layer(shipped) -> None:
    model, _, cfg = shipped
    assert cfg.n_experts >= 8 and len(model.moe_layers()) == cfg.n_layers


def test_shipped_model_answers_held_out_samples(shipped) -> None:
    model, tok, _ = shipped
    samples = list(tasks.iter_samples(25, seed=123, split="test"))  # 100 questions
    qa = qa_accuracy(model, tok, samples)
    assert qa["questions"] == 100
    assert qa["accuracy"] >= 0.85, qa
    assert retrieval_recall(model, tok, samples, gallery=25)["recall_at_1"] >= 0.6


def _drawing(kind: str) -> Image.Image:
    """Plain drawings made with PIL directly (not by the generator)."""
    if kind == "two-on-white":
        img = Image.new("RGB", (300, 200), (250, 250, 250))
        d = ImageDraw.Draw(img)
        d.ellipse((30, 50, 130, 150), fill=(255, 0, 0))
        d.rectangle((180, 60, 260, 140), fill=(0, 0, 255))
        return img
    if kind == "four-on-pale-blue":
        img = Image.new("RGB", (512, 384), (200, 220, 255))
        d = ImageDraw.Draw(img)
        d.rectangle((40, 40, 140, 140), fill="red")
        d.polygon([(300, 40), (380, 160), (220, 160)], fill=(0, 0, 255))
        d.ellipse((60, 220, 160, 320), fill=(255, 255, 0))
        d.ellipse((330, 230, 430, 330), fill=(0, 200, 0))
        return img
    img = Image.new("RGBA", (200, 200), (0, 0, 0, 0))  # transparent background
    d = ImageDraw.Draw(img)
    d.rectangle((20, 20, 90, 90), fill=(0, 0, 255, 255))
    d.polygon([(150, 110), (190, 180), (110, 180)], fill=(0, 255, 0, 255))
    return img


@pytest.mark.parametrize(
    ("kind", "qa"),
    [
        (
            "two-on-white",
            [
                ("what colour is the circle?", "red"),
                ("what shape is blue?", "square"),
                ("how many shapes are there?", "two"),
                ("is there a red circle?", "yes"),
            ],
        ),
        (
            "four-on-pale-blue",
            [
                ("how many shapes are there?", "four"),
                ("what color is the triangle?", "blue"),
                ("what shape is green?", "circle"),
                ("is there a red circle?", "no"),
            ],
        ),
        (
            "two-on-transparent",
            [("what shape is blue?", "square"), ("what shape is green?", "triangle")],
        ),
    ],
)
def test_shipped_model_answers_drawings_made_here(shipped, kind, qa) -> None:
    model, tok, _ = shipped
    img = _drawing(kind)
    images = [img, np.asarray(img)] * len(qa)
    questions = [q for q, _ in qa for _ in range(2)]
    assert answer_batch(model, tok, images, questions) == [a for _, a in qa for _ in range(2)]


def test_cli_eval_writes_report_and_routing(tmp_path, capsys) -> None:
    out = tmp_path / "loads.json"
    args = _parser().parse_args(
        ["eval", "--images", "10", "--routing", str(out), "--quantize", "int8", "-o", "json"]
    )
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["qa"]["per_kind"]) == set(tasks.QUESTION_KINDS)
    assert report["int8"]["size_ratio"] <= 0.3
    loads = json.loads(out.read_text())
    cfg = json.loads((SHIPPED / "config.json").read_text())
    assert len(loads["layers"]) == cfg["n_layers"]
    assert all(
        len(row) == cfg["n_experts"] and all(isinstance(v, int) for v in row)
        for row in loads["layers"]
    )
    assert set(loads["by_modality"]) == {"image", "text"}


def test_cli_eval_reports_a_bad_checkpoint(tmp_path, capsys) -> None:
    args = _parser().parse_args(["eval", "--checkpoint", str(tmp_path / "none")])
    assert args.func(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_train_writes_a_loadable_checkpoint(tmp_path, capsys) -> None:
    out: Path = tmp_path / "ck"
    args = _parser().parse_args(
        [
            "train",
            "--out",
            str(out),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--eval-images",
            "4",
            "-o",
            "json",
        ]
    )
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["training"]["steps"] == 2
    _, _, cfg = load_model(str(out))
    assert (out / "train_report.json").exists() and cfg.n_experts >= 8
    with pytest.raises(SystemExit, match="--steps must be a positive integer, got 0"):
        bad = _parser().parse_args(["train", "--out", str(out), "--steps", "0"])
        bad.func(bad)
