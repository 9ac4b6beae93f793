"""Views of a text for the PII detectors, each with a map back to the original offsets.

The detectors are written for ASCII digits, spaces, hyphens, dots and ``@``; clients
(and copy-paste, and people who want to get a value past a filter) also produce
full-width forms (``４１１１``, ``＠``), tabs and newlines, non-breaking or thin spaces,
en dashes, ``。``, invisible characters (U+200B, U+034F, variation selectors, Hangul
fillers, the braille blank), combining marks over digits, percent-encoding and HTML
entities. Two kinds of view handle them:

- :func:`fold_view` rewrites each character on its own: ASCII letters, digits and
  punctuation stay as they are; any whitespace (tab and newline included) becomes
  ``" "``, and a run of them one space; invisible characters (format and control
  characters, every default-ignorable code point, the braille blank) and combining
  marks are dropped; anything else goes
  through NFKC (full-width and compatibility forms become ASCII), then any dash
  (category Pd, U+2212 minus) -> ``"-"``, ideographic full stops -> ``"."``, any decimal
  digit (Arabic-Indic, Devanagari...) -> its ASCII digit.
- :func:`decode_view` decodes percent-encoded runs (``%40``, UTF-8 multi-byte
  sequences) and HTML character references (``&#64;``, ``&#x40;``, ``&commat;``); every
  decoded character maps back to the whole reference it came from.

A :class:`View` knows, for every one of its characters, the range of the original text
it came from, so that a span found in a view is a span of the original
(:meth:`View.span`). Redaction then replaces the original characters, and the rest of
the text is forwarded exactly as the client wrote it. Every step is one pass over the
text (linear time).
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

_DOTS = frozenset("\u3002\uff61")  # 。 ｡ (NFKC leaves 。 alone)
# Default-ignorable code points (Unicode DerivedCoreProperties) that are not format
# characters (Cf) or combining marks (M*), which are dropped by category, plus the
# braille blank, which renders as nothing in most fonts.
_INVISIBLE = frozenset(
    "\u115f\u1160\u3164\uffa0\u2800"  # Hangul fillers, braille blank
    "\u180b\u180c\u180d\u180e\u180f"  # Mongolian free variation selectors, vowel separator
    "\u17b4\u17b5"  # Khmer inherent vowels
)
_DROP_CATEGORIES = frozenset({"Cf", "Cc", "Cs", "Co", "Cn", "Mn", "Mc", "Me"})
# What the ASCII fast path leaves alone: printable ASCII. Anything else goes through
# _fold_char (whitespace, controls, every non-ASCII character).
_SPECIAL = re.compile(r"[^\x20-\x7e]+")
_ASCII_WS = str.maketrans("\t\n\r\x0b\x0c", "     ")
_SPACE_RUN = re.compile(" {2,}")


@dataclass(frozen=True)
class View:
    """A rewritten text; ``starts[i]:ends[i]`` is the original range of ``text[i]``
    (both ``None`` when the view is the original, character for character)."""

    text: str
    starts: list[int] | None = None
    ends: list[int] | None = None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span that ``text[start:end]`` came from (whole characters)."""
        if self.starts is None or self.ends is None:
            return start, end
        return self.starts[start], self.ends[end - 1]

    def then(self, inner: View) -> View:
        """``inner`` (a view of ``self.text``) as a view of the original text."""
        if inner.starts is None or inner.ends is None:
            return View(inner.text, self.starts, self.ends)
        if self.starts is None or self.ends is None:
            return inner
        starts, ends = self.starts, self.ends
        return View(
            inner.text,
            [starts[i] for i in inner.starts],
            [ends[i - 1] for i in inner.ends],
        )


@lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    if ch.isspace():
        return " "
    if ch in _INVISIBLE or unicodedata.category(ch) in _DROP_CATEGORIES:
        return ""
    out = []
    for c in unicodedata.normalize("NFKC", ch):
        if c.isascii() and c.isprintable():
            out.append(c)
        elif c.isspace():
            out.append(" ")
        elif c == "\u2212" or unicodedata.category(c) == "Pd":
            out.append("-")
        elif c in _DOTS:
            out.append(".")
        elif c in _INVISIBLE or unicodedata.category(c) in _DROP_CATEGORIES:
            continue
        else:
            digit = unicodedata.decimal(c, None)
            out.append(str(digit) if digit is not None else c)
    return "".join(out)


def _collapse_spaces(view: View) -> View:
    """``view`` with every run of spaces cut to its first one."""
    text = view.text
    if "  " not in text:
        return view
    n = len(text)
    starts = view.starts if view.starts is not None else range(n)
    ends = view.ends if view.ends is not None else range(1, n + 1)
    parts: list[str] = []
    new_starts: list[int] = []
    new_ends: list[int] = []
    pos = 0
    for m in _SPACE_RUN.finditer(text):
        keep = m.start() + 1
        parts.append(text[pos:keep])
        new_starts.extend(starts[pos:keep])
        new_ends.extend(ends[pos:keep])
        pos = m.end()
    parts.append(text[pos:])
    new_starts.extend(starts[pos:])
    new_ends.extend(ends[pos:])
    return View("".join(parts), new_starts, new_ends)


def fold_view(text: str) -> View:
    """The folded view of ``text`` (see the module docstring)."""
    return _collapse_spaces(_fold_chars(text))


def _fold_chars(text: str) -> View:
    if text.isascii() and _SPECIAL.search(text.translate(_ASCII_WS)) is None:
        folded = text.translate(_ASCII_WS)  # same length: offsets are the original's
        return View(folded)
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for m in _SPECIAL.finditer(text):
        a, b = m.span()
        parts.append(text[pos:a])  # printable ASCII: one to one
        starts.extend(range(pos, a))
        ends.extend(range(pos + 1, a + 1))
        for i in range(a, b):
            folded = _fold_char(text[i])
            parts.append(folded)
            starts.extend([i] * len(folded))
            ends.extend([i + 1] * len(folded))
        pos = b
    parts.append(text[pos:])
    starts.extend(range(pos, len(text)))
    ends.extend(range(pos + 1, len(text) + 1))
    return View("".join(parts), starts, ends)


_ENCODED = re.compile(
    r"(?:%[0-9A-Fa-f]{2})+"
    r"|&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"
)


def _decode(ref: str) -> str:
    if ref.startswith("%"):
        return bytes.fromhex(ref.replace("%", "")).decode("utf-8", errors="replace")
    return html.unescape(ref)


def decode_view(text: str) -> View | None:
    """``text`` with percent-encoded runs and HTML character references decoded, or
    ``None`` when it holds none."""
    if "%" not in text and "&" not in text:
        return None
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    changed = False
    for m in _ENCODED.finditer(text):
        a, b = m.span()
        decoded = _decode(m.group())
        if decoded == m.group():
            continue  # an unknown entity: left as it is
        changed = True
        parts.append(text[pos:a])
        starts.extend(range(pos, a))
        ends.extend(range(pos + 1, a + 1))
        parts.append(decoded)
        starts.extend([a] * len(decoded))
        ends.extend([b] * len(decoded))
        pos = b
    if not changed:
        return None
    parts.append(text[pos:])
    starts.extend(range(pos, len(text)))
    ends.extend(range(pos + 1, len(text) + 1))
    return View("".join(parts), starts, ends)


def views(text: str, rounds: int = 2) -> list[View]:
    """The folded view of ``text`` and, when it holds encoded characters, the folded
    view of its decoded form (decoded up to ``rounds`` times: ``%2540`` is ``@``)."""
    current = fold_view(text)
    out = [current]
    for _ in range(rounds):
        decoded = decode_view(current.text)
        if decoded is None:
            break
        current = current.then(decoded).then(fold_view(decoded.text))
        out.append(current)
    return out
