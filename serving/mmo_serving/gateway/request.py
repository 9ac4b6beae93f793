"""What the gateway reads in a request body: its text, its images, its hash.

The walk is schema-agnostic on purpose: every string in the JSON body is user text
unless it is an image or a protocol keyword, so a field the OpenAI schema adds later
(or a custom one) is scanned for PII rather than silently ignored.

- An *image* is a string under an image key (``image_url``, ``image``, ``images``,
  ``input_image``, including their ``url`` member) or any ``data:<type>/<subtype>``
  URL (text that merely starts with ``data:`` is text).
  It is *inline* when it is a ``data:`` URL (or bare base64) and *remote* when it names
  a scheme (``https://``, ``http://``, ``s3://``, ``file://``...): fetching it would
  make the server reach out, so the gateway refuses it wherever it would be fetched.
- Protocol keywords (``model``, ``role``, ``type``, ``detail``, ``encoding_format``,
  ``object``) are not user text, and neither are dict keys: they are never rewritten,
  but they are collected (with remote image URLs) in ``Scan.other`` and checked for PII
  like text (:meth:`Scan.strings`), since they travel with the request too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IMAGE_KEYS = frozenset({"image_url", "image", "images", "input_image"})
KEYWORD_KEYS = frozenset({"model", "role", "type", "detail", "encoding_format", "object"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DATA_URL = re.compile(r"^data:[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+[;,]", re.IGNORECASE)


@dataclass
class Scan:
    texts: list[str] = field(default_factory=list)
    inline_images: int = 0
    remote_images: int = 0
    # dict keys, protocol keyword values and remote image URLs (never inline images)
    other: list[str] = field(default_factory=list)

    def strings(self) -> list[str]:
        """Every string to check for PII: the texts and the other strings."""
        return self.texts + self.other


def _is_image(key: str | None, in_image: bool, value: str) -> bool:
    return in_image or key in IMAGE_KEYS or bool(_DATA_URL.match(value))


def _walk(
    value: Any,
    key: str | None,
    in_image: bool,
    on_text: Callable[[str], str],
    on_other: Callable[[str], None],
    on_image: Callable[[str], None],
) -> Any:
    if isinstance(value, str):
        if key in KEYWORD_KEYS:
            on_other(value)
            return value
        if _is_image(key, in_image, value):
            on_image(value)
            return value
        return on_text(value)
    if isinstance(value, dict):
        inside = in_image or key in IMAGE_KEYS
        out = {}
        for k, v in value.items():
            on_other(str(k))
            out[k] = _walk(v, str(k), inside, on_text, on_other, on_image)
        return out
    if isinstance(value, list):
        return [_walk(v, key, in_image, on_text, on_other, on_image) for v in value]
    return value


def scan(body: Any) -> Scan:
    """Text segments, other strings and image counts of a JSON body."""
    out = Scan()

    def text(s: str) -> str:
        out.texts.append(s)
        return s

    def image(s: str) -> None:
        if _SCHEME.match(s.strip()):
            out.remote_images += 1
            out.other.append(s)
        else:
            out.inline_images += 1

    _walk(body, None, False, text, out.other.append, image)
    return out


def map_texts(body: Any, fn: Callable[[str], str]) -> Any:
    """A copy of ``body`` with ``fn`` applied to every user-text string."""
    return _walk(body, None, False, fn, lambda _s: None, lambda _s: None)


def payload_sha256(body: Any) -> str:
    """Hash of the canonical JSON of the body (what the audit trail records)."""
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()
