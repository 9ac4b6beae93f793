"""PII detectors and redaction (pure: regular expressions and checksums, stdlib only).

Kinds (the ``kind`` label of ``mmo_pii_redactions_total``):

- ``email``: ``local@domain.tld``.
- ``phone``: international numbers (``+`` country code, 8-15 digits), North American
  ``(555) 123-4567`` / ``555-123-4567``, Chinese mobiles ``1[3-9]`` + 9 digits, national
  numbers with a trunk ``0`` written in groups (``030 1234 5678``, ``06 12 34 56 78``).
  A bare run of digits is *not* a phone number (order numbers would all match).
- ``card``: 13-19 digits (spaces or hyphens allowed), first digit 2-6 (the issuer
  ranges of Visa, Mastercard, Amex, Discover, JCB, UnionPay, Diners) and a valid Luhn
  check digit.
- ``cn_id``: 18-character PRC resident identity number: region (first digit 1-8),
  a real birth date, the ISO 7064 MOD 11-2 check character (``0-9`` or ``X``).
- ``iban``: country code, two check digits, BBAN of the country's registered length
  (ISO 13616 registry; unknown countries: 15-34 characters), mod-97 remainder 1.
  Print format (groups of four separated by spaces) is accepted.
- ``ipv4`` / ``ipv6``: addresses that :mod:`ipaddress` accepts.

Detectors run in the order above-with-overlap-priority (email, iban, cn_id, card, ipv6,
ipv4, phone): a span already claimed by one kind is not reported again by a later one.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

KINDS: tuple[str, ...] = ("email", "iban", "cn_id", "card", "ipv6", "ipv4", "phone")


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


# ------------------------------------------------------------------------------ checksums


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check over a string of decimal digits (check digit last)."""
    if not digits or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"


def cn_id_valid(value: str) -> bool:
    """PRC resident ID (GB 11643-1999): 17 digits, region, birth date, check char."""
    if len(value) != 18 or not value[:17].isdigit() or not value[:17].isascii():
        return False
    if value[0] not in "12345678":
        return False
    try:
        born = _dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if not _dt.date(1900, 1, 1) <= born <= _dt.date.today():
        return False
    total = sum(int(c) * w for c, w in zip(value[:17], _CN_WEIGHTS, strict=True))
    return _CN_CHECK[total % 11] == value[17].upper()


# IBAN lengths of the ISO 13616 registry (country -> total length).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(compact: str) -> bool:
    """ISO 13616 IBAN without spaces: registered length (when known) and mod-97 == 1."""
    value = compact.upper()
    if not re.fullmatch(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}", value):
        return False
    expected = IBAN_LENGTHS.get(value[:2])
    if expected is not None and len(value) != expected:
        return False
    rearranged = value[4:] + value[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


# ------------------------------------------------------------------------------ detectors

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])"
)
# Candidate IBAN: country, check digits, then alphanumerics possibly in groups of 1-4
# separated by single spaces. Trimmed to the country's length below.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}")
_CN_ID = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")
_CARD = re.compile(r"(?<![0-9])[2-6](?:[ -]?[0-9]){12,18}(?![0-9])")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?"
    r"(?![\w:])"
)
_IPV4 = re.compile(r"(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?!\.?[0-9])(?!\w)")
_PHONE_PATTERNS = (
    # international: +CC then groups, 8-15 digits in total (E.164)
    re.compile(r"(?<![\w+])\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}(?![0-9])"),
    # North American (555) 123-4567, 555-123-4567, 555.123.4567
    re.compile(r"(?<![\w(])(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}(?!\w)"),
    # Chinese mobile 13812345678, 138 1234 5678, 138-1234-5678
    re.compile(r"(?<![0-9])1[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])"),
    # national with trunk 0 in groups: 030 1234 5678, 06 12 34 56 78, 020-7946-0958
    re.compile(r"(?<![\w+])0[1-9][0-9]{0,3}(?:[ .-][0-9]{2,4}){2,4}(?![\w])"),
)


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        cand = m.group()
        # Try the registered length first, then shorter prefixes ending at a group edge:
        # the greedy candidate may have absorbed a following upper-case word.
        ends = [i + 1 for i, ch in enumerate(cand) if ch != " "]
        want = IBAN_LENGTHS.get(cand[:2].upper())
        for n_chars in [want] if want else range(34, 14, -1):
            if n_chars is None or n_chars > len(ends):
                continue
            end = ends[n_chars - 1]
            if end < len(cand) and cand[end] != " ":
                continue  # would cut a word in half
            if iban_valid(cand[:end].replace(" ", "")):
                yield m.start(), m.start() + end
                break


def _cn_ids(text: str) -> Iterator[tuple[int, int]]:
    for m in _CN_ID.finditer(text):
        if cn_id_valid(m.group()):
            yield m.span()


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text):
        cand = m.group()
        # Longest first, cutting only where a separator follows: "4111 ... 1111 22"
        # still finds the card in front of an unrelated number.
        ends = [i + 1 for i, ch in enumerate(cand) if i + 1 == len(cand) or cand[i + 1] in " -"]
        for end in reversed(ends):
            digits = _digits(cand[:end])
            if 13 <= len(digits) <= 19 and luhn_valid(digits):
                yield m.start(), m.start() + end
                break


def _ipv6(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV6.finditer(text):
        cand = m.group()
        if sum(ch not in ":." for ch in cand) < 3:
            continue  # "::1", "a::b" and friends: no address worth hiding, often not one
        try:
            ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        yield m.span()


def _ipv4(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield m.span()


_DATE = re.compile(r"[0-9]{1,2}([./-])[0-9]{1,2}\1[0-9]{2,4}|[0-9]{4}([./-])[0-9]{1,2}\2[0-9]{1,2}")


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for pattern in _PHONE_PATTERNS:
        for m in pattern.finditer(text):
            n = len(_digits(m.group()))
            if 8 <= n <= 15 and not _DATE.fullmatch(m.group()):
                yield m.span()


_DETECTORS: dict[str, Callable[[str], Iterator[tuple[int, int]]]] = {
    "email": _emails,
    "iban": _ibans,
    "cn_id": _cn_ids,
    "card": _cards,
    "ipv6": _ipv6,
    "ipv4": _ipv4,
    "phone": _phones,
}


def detect(text: str) -> list[Finding]:
    """Every PII span in ``text``, non-overlapping, sorted by position."""
    taken: list[Finding] = []
    for kind in KINDS:
        for start, end in _DETECTORS[kind](text):
            if any(start < f.end and f.start < end for f in taken):
                continue
            taken.append(Finding(kind, start, end))
    return sorted(taken, key=lambda f: f.start)


def placeholder(kind: str) -> str:
    return f"[{kind.upper()}]"


def redact(text: str) -> tuple[str, Counter[str]]:
    """``text`` with every finding replaced by ``[KIND]``, and the count per kind."""
    findings = detect(text)
    counts: Counter[str] = Counter()
    out: list[str] = []
    pos = 0
    for f in findings:
        out.append(text[pos : f.start])
        out.append(placeholder(f.kind))
        counts[f.kind] += 1
        pos = f.end
    out.append(text[pos:])
    return "".join(out), counts


def count(text: str) -> Counter[str]:
    return Counter(f.kind for f in detect(text))
