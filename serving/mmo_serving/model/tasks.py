"""The synthetic shapes task: drawings of coloured shapes, questions, answers, captions.

Everything here is deterministic: a sample is a pure function of ``(split, seed, index)``
(``make_sample``), drawn with numpy's ``default_rng`` seeded by that triple, so a train
stream and the held-out stream never share a random stream. No torch import.

Question kinds (one-word answers):
  - ``colour``: "what colour is the circle?" -> "red" (asked only of a shape kind that
    occurs once in the drawing),
  - ``shape``: "what shape is red?" -> "circle" (colours in one drawing are distinct),
  - ``count``: "how many shapes are there?" -> "one" .. "four",
  - ``exists``: "is there a red square?" -> "yes" / "no".
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "count", "exists")
MAX_SHAPES = 4
MIN_SIZE, MAX_SIZE = 32, 512
MIN_RADIUS = 0.06  # smallest shape radius / long side of the picture
SPLITS: dict[str, int] = {"train": 1, "val": 2, "test": 3}

# Several common renderings of each colour name (CSS / X11 / paint programs).
PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((255, 0, 0), (220, 20, 60), (200, 30, 30), (230, 50, 40), (178, 34, 34)),
    "green": ((0, 128, 0), (0, 200, 0), (34, 139, 34), (50, 205, 50), (0, 255, 0)),
    "blue": ((0, 0, 255), (30, 80, 220), (65, 105, 225), (0, 90, 200), (0, 0, 160)),
    "yellow": ((255, 255, 0), (255, 215, 0), (240, 230, 40), (250, 240, 90)),
    "purple": ((128, 0, 128), (148, 0, 211), (160, 32, 240), (120, 40, 160), (102, 51, 153)),
    "orange": ((255, 165, 0), (255, 140, 0), (245, 120, 20), (255, 127, 39)),
}

COLOUR_QUESTIONS = (
    "what colour is the {shape}?",
    "what color is the {shape}?",
    "which colour is the {shape}?",
    "what is the colour of the {shape}?",
    "what color is the {shape} in the image?",
)
SHAPE_QUESTIONS = (
    "what shape is {colour}?",
    "what shape is the {colour} one?",
    "which shape is {colour}?",
    "what is the {colour} shape?",
    "what shape is the {colour} object?",
)
COUNT_QUESTIONS = (
    "how many shapes are there?",
    "how many shapes?",
    "how many shapes are in the image?",
    "count the shapes.",
    "how many objects are there?",
)
EXISTS_QUESTIONS = (
    "is there a {colour} {shape}?",
    "is there a {colour} {shape} in the image?",
    "does the image contain a {colour} {shape}?",
    "is there a {shape}?",
    "is there a {colour} shape?",
)


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    rgb: tuple[int, int, int]
    cx: float  # centre, pixels
    cy: float
    radius: float  # pixels
    angle: float  # degrees


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]
    outline: tuple[int, int, int] | None = None
    outline_width: int = 0
    jpeg_quality: int | None = None

    @property
    def caption(self) -> str:
        return caption_for([(s.colour, s.kind) for s in self.shapes])


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str


@dataclass(frozen=True)
class Sample:
    scene: Scene
    image: Image.Image
    qas: tuple[QA, ...]

    @property
    def caption(self) -> str:
        return self.scene.caption


def caption_for(items: list[tuple[str, str]]) -> str:
    """Canonical caption: shapes in (shape, colour) vocabulary order, e.g.
    ``"a red circle and a blue square"``; equal content gives equal text."""
    order = sorted(items, key=lambda cs: (SHAPES.index(cs[1]), COLOURS.index(cs[0])))
    parts = [f"a {c} {k}" for c, k in order]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _colour_rgb(rng: np.random.Generator, name: str, jitter: int) -> tuple[int, int, int]:
    base = PALETTE[name][int(rng.integers(len(PALETTE[name])))]
    noise = rng.integers(-jitter, jitter + 1, size=3) if jitter else np.zeros(3, dtype=int)
    return tuple(int(v) for v in np.clip(np.array(base) + noise, 0, 255))  # type: ignore[return-value]


def _far_from(rgb: tuple[int, ...], others: list[tuple[int, int, int]], dist: float) -> bool:
    return all(math.dist(rgb, o) >= dist for o in others)


def _background(rng: np.random.Generator, shape_rgbs: list[tuple[int, int, int]]):
    for _ in range(100):
        u = rng.random()
        if u < 0.3:
            bg: tuple[int, int, int] = (255, 255, 255)
        elif u < 0.4:
            bg = (0, 0, 0)
        elif u < 0.5:
            g = int(rng.integers(40, 250))
            bg = (g, g, g)
        elif u < 0.7:  # pale tints: paper-like
            bg = tuple(int(v) for v in rng.integers(200, 256, size=3))  # type: ignore[assignment]
        else:
            bg = tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[assignment]
        if _far_from(bg, shape_rgbs, 110.0):
            return bg
    return (255, 255, 255) if _far_from((255, 255, 255), shape_rgbs, 110.0) else (0, 0, 0)


def generate_scene(rng: np.random.Generator, augment: bool = True) -> Scene:
    """Random scene: 1-4 non-overlapping shapes with distinct colours on a plain background.

    ``augment`` varies image size (32-512, aspect up to 2:1), colour shades, outlines and
    JPEG compression; without it the image is a square of random size with pure colours."""
    n = int(rng.integers(1, MAX_SHAPES + 1))
    if augment and rng.random() < 0.3:
        w = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
        h = int(np.clip(w * math.exp(rng.uniform(-math.log(2), math.log(2))), MIN_SIZE, MAX_SIZE))
    else:
        w = h = round(math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE))))
    colours = [COLOURS[i] for i in rng.permutation(len(COLOURS))[:n]]
    kinds = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(n)]
    jitter = 18 if augment else 0
    rgbs = [_colour_rgb(rng, c, jitter) for c in colours]
    big, small = max(w, h), min(w, h)
    hi_frac = (0.0, 0.30, 0.22, 0.17, 0.14)[n]  # largest radius / long side
    shapes: list[Shape] = []
    for kind, colour, rgb in zip(kinds, colours, rgbs, strict=True):
        for _attempt in range(200):
            # radius as a fraction of the long side (the model sees a padded square)
            r = rng.uniform(MIN_RADIUS, hi_frac) * big
            r = min(r, 0.42 * small)
            bound = r * 1.3
            if 2 * bound >= small:
                r = small / 2.8
                bound = r * 1.3
            cx = rng.uniform(bound, w - bound)
            cy = rng.uniform(bound, h - bound)
            if all(
                math.hypot(cx - s.cx, cy - s.cy) > 1.05 * (bound + 1.3 * s.radius) for s in shapes
            ):
                break
        else:  # crowded: give up on this shape (keeps the generator total)
            continue
        angle = 0.0
        if augment:
            if kind == "square" and rng.random() < 0.35:
                angle = float(rng.uniform(-30, 30))
            elif kind == "triangle" and rng.random() < 0.5:
                angle = float(rng.uniform(0, 360))
        shapes.append(Shape(kind, colour, rgb, float(cx), float(cy), float(r), angle))
    bg = _background(rng, [s.rgb for s in shapes]) if augment else (255, 255, 255)
    outline, width = None, 0
    if augment and rng.random() < 0.15:
        outline = (0, 0, 0) if rng.random() < 0.5 else (60, 60, 60)
        width = max(1, int(min(s.radius for s in shapes) * 0.08))
        if not _far_from(outline, [bg], 80):
            outline = None
            width = 0
    quality = int(rng.integers(60, 96)) if augment and rng.random() < 0.15 else None
    return Scene(w, h, bg, tuple(shapes), outline, width, quality)


def _polygon(shape: Shape) -> list[tuple[float, float]]:
    if shape.kind == "square":
        h = shape.radius * 0.9
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    else:  # triangle, pointing up at angle 0
        r = shape.radius * 1.15
        pts = [
            (r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    t = math.radians(shape.angle)
    c, s = math.cos(t), math.sin(t)
    return [(shape.cx + x * c - y * s, shape.cy + x * s + y * c) for x, y in pts]


def render(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB PIL image of the scene's size."""
    img = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        if s.kind == "circle":
            box = (s.cx - s.radius, s.cy - s.radius, s.cx + s.radius, s.cy + s.radius)
            draw.ellipse(box, fill=s.rgb, outline=scene.outline, width=scene.outline_width)
        else:
            draw.polygon(_polygon(s), fill=s.rgb, outline=scene.outline, width=scene.outline_width)
    if scene.jpeg_quality is not None:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=scene.jpeg_quality)
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


def questions_for(scene: Scene, rng: np.random.Generator, n: int = 4) -> tuple[QA, ...]:
    """``n`` questions cycling through the kinds (random start), each with its answer."""
    start = int(rng.integers(len(QUESTION_KINDS)))
    return tuple(
        question_of_kind(scene, rng, QUESTION_KINDS[(start + i) % len(QUESTION_KINDS)])
        for i in range(n)
    )


def question_of_kind(scene: Scene, rng: np.random.Generator, kind: str) -> QA:
    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    kinds = [s.kind for s in scene.shapes]
    if kind == "colour":
        unique = [k for k in SHAPES if kinds.count(k) == 1]
        if not unique:  # every kind repeats: ask the shape question instead
            return question_of_kind(scene, rng, "shape")
        k = pick(unique)
        colour = next(s.colour for s in scene.shapes if s.kind == k)
        return QA(pick(COLOUR_QUESTIONS).format(shape=k), colour, "colour")
    if kind == "shape":
        s = pick(scene.shapes)
        return QA(pick(SHAPE_QUESTIONS).format(colour=s.colour), s.kind, "shape")
    if kind == "count":
        return QA(pick(COUNT_QUESTIONS), COUNT_WORDS[len(scene.shapes)], "count")
    if kind == "exists":
        template = pick(EXISTS_QUESTIONS)
        want_yes = rng.random() < 0.5
        pairs = {(s.colour, s.kind) for s in scene.shapes}
        if "{colour}" in template and "{shape}" in template:
            if want_yes:
                colour, k = pick(sorted(pairs))
            else:
                absent = [(c, k) for c in COLOURS for k in SHAPES if (c, k) not in pairs]
                # hard negatives first: a colour or a kind that is present, but not together
                hard = [p for p in absent if p[0] in {c for c, _ in pairs} or p[1] in kinds]
                colour, k = pick(hard if hard and rng.random() < 0.7 else absent)
            q = template.format(colour=colour, shape=k)
            return QA(q, "yes" if (colour, k) in pairs else "no", "exists")
        if "{shape}" in template:
            k = pick(SHAPES)
            return QA(template.format(shape=k), "yes" if k in kinds else "no", "exists")
        colour = pick(COLOURS)
        present = {c for c, _ in pairs}
        return QA(template.format(colour=colour), "yes" if colour in present else "no", "exists")
    raise ValueError(f"unknown question kind {kind!r}; valid: {', '.join(QUESTION_KINDS)}")


def make_sample(index: int, seed: int = 0, split: str = "train", n_questions: int = 4) -> Sample:
    """The ``index``-th sample of ``split`` for ``seed``: same arguments, same sample.

    ``train`` is augmented; ``val`` and ``test`` use the same augmentation (held-out
    drawings come from the same distribution, but from a different random stream)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    rng = np.random.default_rng([SPLITS[split], seed, index])
    scene = generate_scene(rng)
    return Sample(scene, render(scene), questions_for(scene, rng, n_questions))


def iter_samples(n: int, seed: int = 0, split: str = "train", start: int = 0) -> Iterator[Sample]:
    for i in range(start, start + n):
        yield make_sample(i, seed, split)


def vocabulary() -> list[str]:
    """Every word the task can produce (questions, answers, captions)."""
    words: set[str] = set(COLOURS) | set(SHAPES) | set(COUNT_WORDS) | {"yes", "no", "a", "and"}
    words |= {"color", "colour", "image", "background", "shapes", "objects"}
    for t in COLOUR_QUESTIONS + SHAPE_QUESTIONS + COUNT_QUESTIONS + EXISTS_QUESTIONS:
        words |= set(_words(t.replace("{", " ").replace("}", " ")))
    return sorted(words)


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z]+|[0-9]+", text.lower())


def _inside(shape: Shape, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask: which points (pixel coordinates of the scene) the shape covers."""
    dx, dy = x - shape.cx, y - shape.cy
    if shape.kind == "circle":
        return dx * dx + dy * dy <= shape.radius**2
    t = math.radians(shape.angle)
    c, s = math.cos(t), math.sin(t)
    u, v = dx * c + dy * s, -dx * s + dy * c  # into the shape's own frame
    if shape.kind == "square":
        h = shape.radius * 0.9
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    r = shape.radius * 1.15
    pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    inside = np.ones_like(u, dtype=bool)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
        inside &= (x2 - x1) * (v - y1) - (y2 - y1) * (u - x1) >= 0
    return inside


def cell_labels(
    scene: Scene, grid: int, frame: tuple[int, int, int] | None = None, sub: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense training targets for the model's ``grid x grid`` image tokens, in the frame
    the model sees (``frame`` = left, top, side in picture pixels, as
    ``preprocess.frame_of`` finds it; default: the drawing padded to a centred square):
    per cell, the colour index (0 = background, else 1 + COLOURS index) and kind index
    (0 = background, else 1 + SHAPES index) of the shape covering most of it (at least a
    quarter), and whether a shape's centre lies in the cell."""
    if frame is None:
        side = max(scene.width, scene.height)
        frame = ((scene.width - side) // 2, (scene.height - side) // 2, side)
    left, top, side = frame
    ox, oy = -left, -top
    step = side / grid
    offs = (np.arange(sub) + 0.5) / sub
    gx = (np.arange(grid)[:, None] + offs[None, :]).reshape(-1) * step - ox  # grid*sub
    gy = (np.arange(grid)[:, None] + offs[None, :]).reshape(-1) * step - oy
    xx, yy = np.meshgrid(gx, gy)  # [grid*sub (y), grid*sub (x)]
    colour = np.zeros(grid * grid, dtype=np.int64)
    kind = np.zeros(grid * grid, dtype=np.int64)
    centre = np.zeros(grid * grid, dtype=np.float32)
    best = np.full(grid * grid, 0.25)
    for s in scene.shapes:
        cover = _inside(s, xx, yy).reshape(grid, sub, grid, sub).mean(axis=(1, 3)).reshape(-1)
        win = cover >= best
        colour[win] = 1 + COLOURS.index(s.colour)
        kind[win] = 1 + SHAPES.index(s.kind)
        best = np.maximum(best, cover)
        cx = min(grid - 1, max(0, int((s.cx + ox) / step)))
        cy = min(grid - 1, max(0, int((s.cy + oy) / step)))
        centre[cy * grid + cx] = 1.0
    return colour, kind, centre
