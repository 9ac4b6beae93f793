"""Text normalisation for the PII detectors, with a map back to the original offsets.

The detectors are written for ASCII digits, spaces, hyphens, dots and ``@``; clients
(and copy-paste) also produce full-width forms (``４１１１``, ``＠``), non-breaking or
thin spaces, en dashes, ``。`` and invisible format characters (U+200B). :func:`fold`
rewrites each character on its own:

- ASCII stays as it is;
- otherwise NFKC (full-width and compatibility forms become ASCII), then
  any whitespace -> ``" "``, any dash (Unicode category Pd, and U+2212 minus) -> ``"-"``,
  ideographic full stops -> ``"."``, any decimal digit (Arabic-Indic, Devanagari...) ->
  its ASCII digit, and format characters (category Cf: zero-width spaces and joiners,
  soft hyphen, BOM) are dropped.

It returns the folded text and, for every folded character, the index of the original
character it came from, so that a span found in the folded text is a span of the
original (:func:`original_span`). Redaction then replaces the original characters and
the rest of the text is forwarded exactly as the client wrote it.
"""

from __future__ import annotations

import unicodedata

_DOTS = frozenset("\u3002\uff61")  # 。 ｡ (NFKC leaves 。 alone)


def _fold_char(ch: str) -> str:
    if ch.isascii():
        return ch
    out = []
    for c in unicodedata.normalize("NFKC", ch):
        if c.isascii():
            out.append(c)
        elif c.isspace():
            out.append(" ")
        elif c == "\u2212" or unicodedata.category(c) == "Pd":
            out.append("-")
        elif c in _DOTS:
            out.append(".")
        elif unicodedata.category(c) == "Cf":
            continue
        else:
            digit = unicodedata.decimal(c, None)
            out.append(str(digit) if digit is not None else c)
    return "".join(out)


def fold(text: str) -> tuple[str, list[int] | None]:
    """``(folded, origin)``: ``origin[i]`` is the index in ``text`` of ``folded[i]``
    (with one extra entry, ``len(text)``). ``origin`` is ``None`` when nothing changed."""
    if text.isascii():
        return text, None
    parts: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        folded = _fold_char(ch)
        parts.append(folded)
        origin.extend([i] * len(folded))
    origin.append(len(text))
    return "".join(parts), origin


def original_span(origin: list[int] | None, start: int, end: int) -> tuple[int, int]:
    """The span of the original text that folded ``[start, end)`` came from (whole
    original characters, so a character folded into several is never cut)."""
    if origin is None:
        return start, end
    return origin[start], origin[end - 1] + 1
