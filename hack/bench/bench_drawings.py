#!/usr/bin/env python
"""The built-in model on drawings made here, not by its task generator.

How well does the model read drawings made outside the project? This benchmark draws
its own with PIL, independently of ``mmo_serving.model.tasks``: plain
RGB shades per colour, 15 named backgrounds, 17 canvas sizes from 32x32 to 512x512
(square and not), 1-4 shapes placed anywhere including against edges and corners, some
squares rotated, some triangles upside down. It asks the four kinds of question and
reports accuracy overall, per kind and by the smallest shape's radius as a share of the
canvas' long side; then a sweep of single shapes from 3% to 46% of the side.

    .venv/bin/python hack/bench/bench_drawings.py [--checkpoint SRC] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from mmo_serving.model import load_model
from mmo_serving.model.inference import answer_batch

SHADES = {
    "red": [(255, 0, 0), (210, 25, 25), (180, 0, 0)],
    "green": [(0, 160, 0), (0, 200, 0), (46, 139, 87)],
    "blue": [(0, 0, 255), (30, 60, 200), (0, 90, 220)],
    "yellow": [(255, 255, 0), (255, 220, 0), (240, 230, 60)],
    "purple": [(128, 0, 128), (150, 40, 200), (110, 30, 170)],
    "orange": [(255, 165, 0), (255, 120, 0), (250, 140, 30)],
}
BACKGROUNDS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "grey": (128, 128, 128),
    "lightgrey": (220, 220, 220),
    "darkgrey": (50, 50, 50),
    "cream": (255, 250, 220),
    "pink": (255, 200, 210),
    "skyblue": (180, 220, 250),
    "mint": (200, 245, 210),
    "teal": (0, 110, 110),
    "brown": (110, 70, 40),
    "navy": (20, 20, 70),
    "beige": (230, 215, 180),
    "olive": (110, 110, 40),
    "lavender": (225, 215, 245),
}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("zero", "one", "two", "three", "four")
SIZES = [(s, s) for s in (32, 40, 48, 64, 80, 100, 128, 160, 200, 256, 320, 400, 512)]
SIZES += [(512, 256), (200, 400), (96, 48), (300, 500)]
Shape = tuple[str, str, float, float, float]  # colour, kind, x, y, radius


def draw(
    img: Image.Image, rng: random.Random, colour: str, kind: str, x: float, y: float, r: float
) -> None:
    pen = ImageDraw.Draw(img)
    fill = rng.choice(SHADES[colour])
    if kind == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif kind == "square":
        h = r * 0.85
        a = math.radians(rng.uniform(-20, 20)) if rng.random() < 0.2 else 0.0
        corners = ((-h, -h), (h, -h), (h, h), (-h, h))
        pen.polygon(
            [
                (x + u * math.cos(a) - v * math.sin(a), y + u * math.sin(a) + v * math.cos(a))
                for u, v in corners
            ],
            fill=fill,
        )
    else:
        up = -1 if rng.random() < 0.25 else 1
        pen.polygon(
            [(x, y - up * r), (x + r * 0.92, y + up * r * 0.75), (x - r * 0.92, y + up * r * 0.75)],
            fill=fill,
        )


def scene(
    rng: random.Random, w: int, h: int, background: str, n: int
) -> tuple[Image.Image, list[Shape]]:
    bg = BACKGROUNDS[background]
    colours = [c for c, shades in SHADES.items() if all(math.dist(s, bg) > 100 for s in shades)]
    colours = rng.sample(colours, min(n, len(colours)))
    img = Image.new("RGB", (w, h), bg)
    placed: list[Shape] = []
    side = min(w, h)
    for colour in colours:
        kind = rng.choice(SHAPES)
        for _ in range(500):
            r = max(3.5, rng.uniform(0.06, 0.22 if n > 1 else 0.35) * side)
            if rng.random() < 0.5:  # against an edge or in a corner half of the time
                x = rng.choice([r + 1, w - r - 2, rng.uniform(r + 1, w - r - 2)])
                y = rng.choice([r + 1, h - r - 2, rng.uniform(r + 1, h - r - 2)])
            else:
                x, y = rng.uniform(r + 1, w - r - 2), rng.uniform(r + 1, h - r - 2)
            inside = r <= x <= w - 1 - r and r <= y <= h - 1 - r
            if inside and all(
                math.hypot(x - px, y - py) > r + pr + 2 for _, _, px, py, pr in placed
            ):
                draw(img, rng, colour, kind, x, y, r)
                placed.append((colour, kind, x, y, r))
                break
    return img, placed


def questions(rng: random.Random, shapes: list[Shape]) -> list[tuple[str, str, str]]:
    kinds = [k for _, k, *_ in shapes]
    pairs = {(c, k) for c, k, *_ in shapes}
    out = []
    unique = [k for k in SHAPES if kinds.count(k) == 1]
    if unique:
        k = rng.choice(unique)
        out.append(
            ("colour", f"what colour is the {k}?", next(c for c, kk, *_ in shapes if kk == k))
        )
    c, k, *_ = rng.choice(shapes)
    out.append(("shape", f"what shape is {c}?", k))
    out.append(("count", "how many shapes are there?", COUNTS[len(shapes)]))
    if rng.random() < 0.5:
        c, k, *_ = rng.choice(shapes)
        out.append(("exists", f"is there a {c} {k}?", "yes"))
    else:
        absent = [(c, k) for c in SHADES for k in SHAPES if (c, k) not in pairs]
        near = [p for p in absent if p[0] in {c for c, _ in pairs} or p[1] in kinds]
        c, k = rng.choice(near or absent)
        out.append(("exists", f"is there a {c} {k}?", "no"))
    return out


def radius_bucket(share: float) -> str:
    return (
        "<0.05"
        if share < 0.05
        else "0.05-0.07"
        if share < 0.07
        else ("0.07-0.09" if share < 0.09 else ">=0.09")
    )


def scenes_benchmark(model: Any, tok: Any, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    asked: list[tuple[Image.Image, str, str, str, str]] = []
    for w, h in SIZES:
        for background in BACKGROUNDS:
            n = rng.randint(1, 2) if min(w, h) < 48 else rng.randint(1, 4)
            img, shapes = scene(rng, w, h, background, n)
            if not shapes:
                continue
            smallest = min(s[4] for s in shapes) / max(w, h)
            for kind, q, a in questions(rng, shapes):
                asked.append((img, q, a, kind, radius_bucket(smallest)))
    got = answer_batch(model, tok, [a[0] for a in asked], [a[1] for a in asked])
    right: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    for (_, _, want, kind, bucket), answer in zip(asked, got, strict=True):
        for key in ("all", kind, f"radius {bucket}"):
            total[key] += 1
            right[key] += answer == want
    return {k: {"accuracy": round(right[k] / total[k], 4), "questions": total[k]} for k in total}


def size_sweep(model: Any, tok: Any, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    out = {}
    for share in (0.03, 0.04, 0.05, 0.06, 0.08, 0.12, 0.2, 0.3, 0.4, 0.46):
        images, asks, wants = [], [], []
        for i in range(60):
            side = rng.choice([128, 256, 512])
            img = Image.new("RGB", (side, side), (255, 255, 255) if i % 2 else (40, 40, 40))
            colour, kind, r = rng.choice(list(SHADES)), rng.choice(SHAPES), share * side
            x, y = rng.uniform(r + 1, side - r - 2), rng.uniform(r + 1, side - r - 2)
            draw(img, rng, colour, kind, x, y, r)
            images += [img, img]
            asks += [f"what shape is {colour}?", "how many shapes are there?"]
            wants += [kind, "one"]
        got = answer_batch(model, tok, images, asks)
        out[f"{share:.2f}"] = {
            "shape": sum(
                g == w for g, w, q in zip(got, wants, asks, strict=True) if q.startswith("what")
            ),
            "count": sum(
                g == w for g, w, q in zip(got, wants, asks, strict=True) if q.startswith("how")
            ),
            "of": 60,
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="builtin://shapes-moe")
    p.add_argument("--seed", type=int, default=20241)
    p.add_argument("--out", default="hack/bench/results/drawings.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    model, tok, _ = load_model(a.checkpoint)
    result = {
        "checkpoint": a.checkpoint,
        "scenes": scenes_benchmark(model, tok, a.seed),
        "oneShapeBySize": size_sweep(model, tok, a.seed + 1),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
