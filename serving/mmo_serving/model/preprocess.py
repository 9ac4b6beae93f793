"""Image preprocessing: any PIL image or HxW[x3|x4] uint8 array -> the model's input.

The image is made RGB (alpha composited on white) and framed: cut to a square around
what is drawn on it (the pixels that differ from the border colour), with a margin, and
padded with the border colour where the square leaves the picture. Framing makes small
shapes on a large canvas look like the shapes the model learned from; a picture with
nothing on a plain background, or with no plain background, is only padded to a square.
The square is then resized to ``image_size`` with a bilinear filter and scaled to
[-1, 1]. Training uses the same functions (``frame_of`` also places its dense targets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image


class ImageError(ValueError):
    """The input cannot be read as an image."""


def to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            raise ImageError(f"image array must be uint8, got dtype {arr.dtype}")
        if arr.ndim == 2:
            img = Image.fromarray(arr, "L")
        elif arr.ndim == 3 and arr.shape[2] in (3, 4):
            img = Image.fromarray(arr, "RGB" if arr.shape[2] == 3 else "RGBA")
        else:
            raise ImageError(f"image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    else:
        raise ImageError(f"expected a PIL image or a numpy uint8 array, got {type(image).__name__}")
    if img.width < 1 or img.height < 1:
        raise ImageError(f"image is empty ({img.width}x{img.height})")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")


# A pixel is drawn when a channel differs from the border colour by more than this
# (JPEG noise and colour shading stay below it).
FOREGROUND_DIFF = 48
FRAME_MARGIN = 1.3  # side of the frame / extent of what is drawn
MIN_FRAME_SIDE = 8  # pixels


@dataclass(frozen=True)
class Frame:
    """The square of the picture the model sees: ``side`` pixels from (left, top), which
    may lie outside the picture (that part is filled with ``background``)."""

    left: int
    top: int
    side: int
    background: tuple[int, int, int]


def frame_of(img: Image.Image) -> Frame:
    arr = np.asarray(img, dtype=np.int16)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    background = tuple(int(v) for v in np.median(border, axis=0))
    w, h = img.size
    padded = max(w, h)
    drawn = np.abs(arr - np.array(background, dtype=np.int16)).max(axis=2) > FOREGROUND_DIFF
    ys, xs = np.nonzero(drawn)
    if len(xs) == 0:
        return Frame((w - padded) // 2, (h - padded) // 2, padded, background)  # type: ignore[arg-type]
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    extent = max(x1 - x0, y1 - y0)
    side = max(MIN_FRAME_SIDE, math.ceil(extent * FRAME_MARGIN))
    left = round((x0 + x1 - side) / 2)
    top = round((y0 + y1 - side) / 2)
    return Frame(left, top, side, background)  # type: ignore[arg-type]


def framed(img: Image.Image, frame: Frame) -> Image.Image:
    if (frame.left, frame.top, frame.side) == (0, 0, img.width) and img.width == img.height:
        return img
    out = Image.new("RGB", (frame.side, frame.side), frame.background)
    out.paste(img, (-frame.left, -frame.top))
    return out


def preprocess_array(image: Any, image_size: int, frame: Frame | None = None) -> np.ndarray:
    """uint8 array [image_size, image_size, 3] as the model sees it (``frame``: one that
    ``frame_of`` already found for this picture)."""
    img = to_pil(image)
    img = framed(img, frame or frame_of(img))
    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def preprocess(image: Any, image_size: int, frame: Frame | None = None) -> torch.Tensor:
    """float32 tensor [3, image_size, image_size] in [-1, 1]."""
    arr = preprocess_array(image, image_size, frame)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def preprocess_batch(images: list[Any], image_size: int) -> torch.Tensor:
    return torch.stack([preprocess(im, image_size) for im in images])
