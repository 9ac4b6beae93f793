"""What the gateway reads in a request body: its text, its images, its hash.

The walk is schema-agnostic on purpose: every string in the JSON body is user text
unless it is an image or a protocol keyword, so a field the OpenAI schema adds later
(or a custom one) is scanned for PII rather than silently ignored.

- An *image* is a string under an image key (``image_url``, ``image``, ``images``,
  ``input_image``, including their ``url`` member) or a string that is a
  ``data:<type>/<subtype>`` URL (text that merely starts with ``data:`` is text).
  It is *inline* when it is a ``data:`` URL (or bare base64) and *remote* when it names
  a scheme (``https://``, ``http://``, ``s3://``, ``file://``...): fetching it would
  make the server reach out, so the gateway refuses it wherever it would be fetched.
- A text that *holds* an image counts one inline image too (and stays text): a
  ``data:<type>/<subtype>`` URL anywhere in it (after a space, mid-sentence) or raw
  base64 image bytes (the PNG, JPEG, GIF or WebP signature followed by base64).
- ``data:text/...`` is text, not an image, wherever it stands: its content (base64
  decoded) is scanned for PII like every other string.
- The metadata of a ``data:`` URL (its parameters before the comma, e.g. ``name=``)
  is scanned for PII: it travels with the image.
- Protocol keywords (``model``, ``role``, ``type``, ``detail``, ``encoding_format``,
  ``object``) are not user text, and neither are dict keys: they are never rewritten,
  but they are collected (with remote image URLs) in ``Scan.other`` and checked for PII
  like text (:meth:`Scan.strings`), since they travel with the request too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IMAGE_KEYS = frozenset({"image_url", "image", "images", "input_image"})
KEYWORD_KEYS = frozenset({"model", "role", "type", "detail", "encoding_format", "object"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# bounded repetitions only: no input makes these backtrack over more than a short window
_DATA_URL = re.compile(r"data:([A-Za-z0-9.+-]{1,127})/[A-Za-z0-9.+-]{1,127}[;,]", re.IGNORECASE)
# base64 of the PNG, JPEG, GIF and WebP signatures, then enough base64 to be an image
_BASE64_IMAGE = re.compile(r"(?<![A-Za-z0-9+/])(?:iVBORw0KGgo|/9j/|R0lGOD|UklGR)[A-Za-z0-9+/]{48}")
_META_MAX = 4096  # characters of a data: URL's parameters scanned for PII


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


def _data_url(value: str) -> re.Match[str] | None:
    """The ``data:<type>/<subtype>`` URL that ``value`` is (leading spaces allowed)."""
    return _DATA_URL.match(value, len(value) - len(value.lstrip()))


def _is_text_data(m: re.Match[str]) -> bool:
    return m.group(1).lower() == "text"


def _data_metadata(value: str, m: re.Match[str]) -> tuple[str, str | None]:
    """The parameters of the data: URL matched by ``m`` (up to its comma) and, for a
    base64 ``data:text/...`` URL, its decoded content (a plain one is scanned as the
    text it is)."""
    comma = value.find(",", m.start(), m.end() + _META_MAX)
    end = comma if comma >= 0 else min(len(value), m.end() + _META_MAX)
    meta = value[m.start() : end]
    if not _is_text_data(m) or comma < 0 or ";base64" not in meta.lower():
        return meta, None
    words = value[comma + 1 :].split(None, 1)
    return meta, _b64_text(words[0] if words else "")


def _b64_text(payload: str) -> str:
    """Base64 (standard or URL-safe) as text, as far as it decodes; never an error."""
    clean = re.sub(r"[^A-Za-z0-9+/]", "", payload.replace("-", "+").replace("_", "/"))
    clean = clean[: len(clean) - len(clean) % 4 if len(clean) % 4 == 1 else len(clean)]
    raw = base64.b64decode(clean + "=" * (-len(clean) % 4))
    return raw.decode("utf-8", "replace")


def _is_image(key: str | None, in_image: bool, value: str) -> bool:
    if in_image or key in IMAGE_KEYS:
        m = _data_url(value)
        return m is None or not _is_text_data(m)  # data:text/... in an image slot is text
    m = _data_url(value)
    return m is not None and not _is_text_data(m)


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
        embedded = False
        for m in _DATA_URL.finditer(s):
            meta, content = _data_metadata(s, m)
            out.other.append(meta)
            if content is not None:
                out.other.append(content)
            embedded = embedded or not _is_text_data(m)
        if embedded or _BASE64_IMAGE.search(s):
            out.inline_images += 1
        return s

    def image(s: str) -> None:
        if _SCHEME.match(s.strip()):
            out.remote_images += 1
            out.other.append(s)
            return
        out.inline_images += 1
        m = _data_url(s)
        if m is not None:
            out.other.append(_data_metadata(s, m)[0])

    _walk(body, None, False, text, out.other.append, image)
    return out


def map_texts(body: Any, fn: Callable[[str], str]) -> Any:
    """A copy of ``body`` with ``fn`` applied to every user-text string."""
    return _walk(body, None, False, fn, lambda _s: None, lambda _s: None)


def payload_hmac(body: Any, key: bytes) -> str:
    """HMAC-SHA256 (hex) of the canonical JSON of the body under the deployment's audit
    key: the trail can match two requests, but a guessed body cannot be confirmed
    without the key. Lone surrogates are hashed as they came (never an error)."""
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, canon.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
