"""Image preprocessing: any PIL image or HxW[x3|x4] uint8 array -> the model's input.

The image is made RGB (alpha composited on white), padded to a square with its border
colour (so shapes keep their proportions), resized to ``image_size`` with an
antialiasing bilinear filter and scaled to [-1, 1]. Training uses the same function.
"""

from __future__ import annotations

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


def _pad_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    arr = np.asarray(img)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    colour = tuple(int(v) for v in np.median(border, axis=0))
    side = max(w, h)
    out = Image.new("RGB", (side, side), colour)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def preprocess_array(image: Any, image_size: int) -> np.ndarray:
    """uint8 array [image_size, image_size, 3] as the model sees it."""
    img = _pad_square(to_pil(image))
    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def preprocess(image: Any, image_size: int) -> torch.Tensor:
    """float32 tensor [3, image_size, image_size] in [-1, 1]."""
    arr = preprocess_array(image, image_size)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def preprocess_batch(images: list[Any], image_size: int) -> torch.Tensor:
    return torch.stack([preprocess(im, image_size) for im in images])
