"""The inline images of a request: ``data:`` URLs checked and kept undecoded.

Pixels are decoded by the engine (on a cache miss only). A remote URL never reaches
here: the gateway refuses it first (the server fetches nothing); the check below is
what a request that somehow got past it meets.
"""

from __future__ import annotations

from mmo_serving.config import AppArgs
from mmo_serving.images import RawImage, parse_data_url
from mmo_serving.openai.schema import ApiError


def inline_image(url: str, param: str, args: AppArgs) -> RawImage:
    check_takes_images(param, args)
    return parse_data_url(url, max_bytes=args.max_image_bytes, param=param)


def check_takes_images(param: str, args: AppArgs) -> None:
    """400 naming ``param`` when the model has no image modality (a text-only model)."""
    if "image" not in args.modalities:
        raise ApiError(
            400,
            f"{param}: model {args.name!r} does not accept images "
            f"(modalities: {', '.join(args.modalities)})",
            code="unsupported_modality",
            param=param,
        )
