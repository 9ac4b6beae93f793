"""Inline image decoding for the API: ``data:`` URLs only, with type and size checks.

Every failure is an :class:`~mmo_serving.openai.schema.ApiError` naming the field and
saying what is accepted. Remote ``http(s)://`` URLs are refused here (the gateway may
refuse them earlier, with a 403, in private mode).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmo_serving.openai.schema import ApiError

# MIME type in the data URL -> the format Pillow must find in the bytes.
SUPPORTED_TYPES: dict[str, str] = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/webp": "WEBP",
}
MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class RawImage:
    """A checked data URL: its type and bytes, not yet decoded into pixels."""

    mime: str
    raw: bytes
    sha256: str  # of the bytes: what the cache key uses (a hit skips the pixel decode)
    param: str

    def to_array(self) -> np.ndarray:
        """Decode into uint8 H x W x 3 (RGB); ApiError if the bytes are not that image."""
        return _to_rgb(self.raw, SUPPORTED_TYPES[self.mime], self.mime, self.param)


@dataclass(frozen=True)
class DecodedImage:
    array: np.ndarray  # uint8, H x W x 3 (RGB)
    mime: str
    sha256: str
    nbytes: int


def _supported() -> str:
    return ", ".join(t for t in SUPPORTED_TYPES if t != "image/jpg")


def decode_data_url(url: str, *, max_bytes: int, param: str) -> DecodedImage:
    """Decode ``data:image/<type>;base64,<payload>`` into an RGB uint8 array."""
    img = parse_data_url(url, max_bytes=max_bytes, param=param)
    return DecodedImage(img.to_array(), img.mime, img.sha256, len(img.raw))


def parse_data_url(url: str, *, max_bytes: int, param: str) -> RawImage:
    """Check ``data:image/<type>;base64,<payload>``: scheme, type, base64 and size."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme != "data":
        shown = scheme or url[:16]
        raise ApiError(
            400,
            f"{param}: only inline data: URLs are accepted (data:image/png;base64,...); "
            f"got {shown!r}",
            code="unsupported_image_url",
            param=param,
        )
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise ApiError(
            400,
            f"{param}: malformed data URL: no ',' between the header and the data",
            code="invalid_image_url",
            param=param,
        )
    parts = [p.strip().lower() for p in header.split(";")]
    mime, params = parts[0], parts[1:]
    if mime not in SUPPORTED_TYPES:
        raise ApiError(
            400,
            f"{param}: unsupported image type {mime or '(none)'!r}; supported: {_supported()}",
            code="unsupported_image_type",
            param=param,
        )
    if "base64" not in params:
        raise ApiError(
            400,
            f"{param}: the data URL must be base64-encoded (data:{mime};base64,...)",
            code="invalid_image_url",
            param=param,
        )
    payload = "".join(payload.split())  # tolerate line breaks in the base64 text
    # Refuse before decoding when the encoded length alone shows the image is too big.
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise _too_large(param, len(payload) * 3 // 4, max_bytes)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(
            400, f"{param}: invalid base64 data: {exc}", code="invalid_base64", param=param
        ) from exc
    if len(raw) > max_bytes:
        raise _too_large(param, len(raw), max_bytes)
    return RawImage(mime=mime, raw=raw, sha256=hashlib.sha256(raw).hexdigest(), param=param)


def _too_large(param: str, size: int, max_bytes: int) -> ApiError:
    return ApiError(
        413,
        f"{param}: image is too large: {size} bytes, the limit is {max_bytes} bytes",
        code="image_too_large",
        param=param,
    )


def _to_rgb(raw: bytes, expected: str, mime: str, param: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.format != expected:
                raise ApiError(
                    400,
                    f"{param}: the data URL says {mime} but the bytes are "
                    f"{img.format or 'not an image'}",
                    code="unsupported_image_type",
                    param=param,
                )
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ApiError(
                    413,
                    f"{param}: image is too large: {w}x{h} pixels, the limit is "
                    f"{MAX_PIXELS} pixels",
                    code="image_too_large",
                    param=param,
                )
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ApiError:
        raise
    except UnidentifiedImageError as exc:
        raise ApiError(
            400,
            f"{param}: the data is not a readable {mime} image",
            code="invalid_image",
            param=param,
        ) from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ApiError(
            400,
            f"{param}: cannot decode the {mime} image: {exc}",
            code="invalid_image",
            param=param,
        ) from exc


def encode_data_url(array: np.ndarray, fmt: str = "PNG") -> str:
    """The inverse, for samples, `mmo ask` and tests: RGB array -> data URL."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format=fmt)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def file_to_data_url(path: str) -> str:
    """Read an image file and return it as an inline data URL (re-encoded if needed).

    ValueError naming the file and the reason when it is not a picture Pillow reads."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        with Image.open(io.BytesIO(raw)) as img:
            fmt = img.format or ""
            if fmt in ("PNG", "JPEG", "WEBP"):
                img.verify()  # a truncated or corrupt file fails here, not on the server
                mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
                return f"data:{mime};base64,{base64.b64encode(raw).decode()}"
            return encode_data_url(np.asarray(img.convert("RGB")))
    except UnidentifiedImageError as exc:
        kind = "an empty file" if not raw else "not in an image format Pillow reads"
        raise ValueError(
            f"{path}: not an image ({kind}; send a PNG, JPEG, WebP, GIF or BMP picture)"
        ) from exc
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot read the picture: {exc}") from exc
