"""PII detectors and redaction (pure: regular expressions and checksums, stdlib only).

Kinds (the ``kind`` label of ``mmo_pii_redactions_total``):

- ``email``: ``local@domain.tld``; the local part may hold ``'`` (``o'neil@...``) and
  non-ASCII letters, the domain may be internationalised.
- ``phone``: international numbers (``+`` or ``00`` then the country code, 8-15
  digits), North American ``(555) 123-4567`` / ``555-123-4567``, Chinese mobiles
  ``1[3-9]`` + 9 digits, national numbers with a trunk ``0`` written in groups
  (``030 1234 5678``, ``07700 900123``, ``(030) 1234567``, ``030/12345678``,
  ``06 12 34 56 78``) or as one run of 10-11 digits (``02079460958``), and any run of
  10-13 digits (grouped or not) that follows a phone word (``tel``, ``phone``, ``call``,
  ``mobile``, ``fax``, ``电话``, ``手机``...) within 30 characters. Other bare runs of
  digits are *not* phone numbers (order numbers would all match).
- ``card``: 13-19 digits (in groups separated by one or two spaces or a hyphen),
  first digit 2-6 (the issuer ranges of Visa, Mastercard, Amex, Discover, JCB,
  UnionPay, Diners) and a valid Luhn check digit.
- ``cn_id``: 18-character PRC resident identity number: region (first digit 1-8),
  a real birth date, the ISO 7064 MOD 11-2 check character (``0-9`` or ``X``).
- ``iban``: country code, two check digits, BBAN of the country's registered length
  (ISO 13616 registry; unknown countries: 15-34 characters), mod-97 remainder 1.
  Groups separated by one or two spaces or by hyphens are accepted.
- ``ipv4`` / ``ipv6``: dotted quads with octets up to 255 (leading zeros allowed:
  ``192.168.001.001``) and addresses that :mod:`ipaddress` accepts, IPv4-mapped ones
  (``::ffff:192.0.2.128``) as one span.

Detection runs on a normalised copy of the text (:func:`.normalise.fold`: NFKC, so
full-width ``４１１１`` and ``＠`` become ASCII; any Unicode space becomes a space, any
dash a hyphen, ``。`` a dot, any decimal digit its ASCII digit; invisible format
characters such as U+200B are dropped) and maps every span back to the original text
through an offset table, so that :func:`redact` replaces exactly the original
characters and leaves the rest of the text as the client wrote it.

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

from mmo_serving.gateway.normalise import fold, original_span

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

# The local part may hold ' (o'neil) and non-ASCII letters (\w is Unicode), but does
# not start with ' so that a quoted address ('bob@example.com') is still found.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-][\w.%+'-]*@[^\W_](?:[\w-]*[^\W_])?"
    r"(?:\.[^\W_](?:[\w-]*[^\W_])?)*\.(?:[^\W\d_]{2,24}|xn--[a-z0-9-]{2,59})(?![\w-])"
)
# Candidate IBAN: country, check digits, then alphanumerics in groups separated by one
# or two spaces or a hyphen. Trimmed to the country's length below.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?:(?: {1,2}|-)?[A-Za-z0-9]){11,30}")
_CN_ID = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")
_CARD = re.compile(r"(?<![0-9])[2-6](?:(?: {1,2}|-)?[0-9]){12,18}(?![0-9])")
# The dotted-quad tail comes first so that ::ffff:192.0.2.128 is one span.
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?![\w:]|\.[0-9])"
)
_IPV4 = re.compile(r"(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?!\.?[0-9])(?!\w)")
# dd.mm.yyyy / yyyy-mm-dd and friends are not phone numbers, nor is a national number
# allowed to start with a date ("05.11.2026 12:30": the "12" is the time)
_DATE = re.compile(r"[0-9]{1,2}([./-])[0-9]{1,2}\1[0-9]{2,4}|[0-9]{4}([./-])[0-9]{1,2}\2[0-9]{1,2}")
_NOT_DATE = r"(?![0-9]{1,2}(?P<sep>[./-])[0-9]{1,2}(?P=sep)[0-9]{4}(?![0-9]))"
# Where a number may start: not inside a word or another number (1,299 / 3.14 / a-b).
_NUM_START = r"(?<![\w+/-])(?<![0-9][.,])"
# (pattern, fewest digits, most digits); a candidate is trimmed at a group edge to fit.
_PHONE_PATTERNS: tuple[tuple[re.Pattern[str], int, int], ...] = (
    # international: +CC then groups, 8-15 digits in total (E.164)
    (re.compile(r"(?<![\w+])\+[1-9][0-9]{0,2}(?:[ ./-]?\(?[0-9]{1,5}\)?){1,6}(?![0-9])"), 8, 15),
    # the same with the 00 international prefix (a separator after the country code):
    # 0044 20 7946 0958, 0049 (0)30 1234567
    (
        re.compile(
            r"(?<![\w+])00[1-9][0-9]{0,2}[ ./-]\(?[0-9]{1,5}\)?(?:[ ./-]?\(?[0-9]{1,5}\)?){0,5}"
            r"(?![0-9])"
        ),
        10,
        17,
    ),
    # North American (555) 123-4567, 555-123-4567, 555.123.4567
    (
        re.compile(r"(?<!\w)(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}(?!\w)"),
        10,
        10,
    ),
    # Chinese mobile 13812345678, 138 1234 5678, 138-1234-5678
    (re.compile(r"(?<![0-9])1[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])"), 11, 11),
    # national with trunk 0 (area code, maybe in brackets) and groups: 030 1234 5678,
    # 07700 900123, (030) 1234567, 030/12345678, 06 12 34 56 78, 020-7946-0958
    (
        re.compile(
            _NUM_START + _NOT_DATE + r"(?:\(0[1-9][0-9]{0,4}\) ?|0[1-9][0-9]{0,4}"
            r"(?: ?[./-] ?| ))[0-9]{2,8}(?:[ .-][0-9]{2,8}){0,3}(?!\w)"
        ),
        8,
        13,
    ),
    # national with trunk 0 written as one run: 02079460958, 0612345678
    (re.compile(_NUM_START + r"0[1-9][0-9]{8,9}(?!\w|[.,][0-9])"), 10, 11),
)
# Any run of 10-13 digits (grouped or not) is a phone number after a phone word.
_DIGIT_RUN = re.compile(_NUM_START + r"[0-9]{2,}(?:[ .-][0-9]{2,}){0,5}(?!\w|[.,][0-9])")
_PHONE_WORD = re.compile(
    r"(?i)\b(?:tel|phone|call|mobile|mob|cell|fax|whatsapp|sms|contact|handy)"
    r"|电话|電話|手机|手機|联系|聯繫|致电"
)
PHONE_WORD_WINDOW = 30  # characters before the number where a phone word counts


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _longest(cand: str, ok: Callable[[str], bool]) -> int | None:
    """Length of the longest prefix of ``cand`` that ends a group (the next character is
    not alphanumeric, or there is none) and that ``ok`` accepts: a candidate that
    swallowed a following unrelated number is cut back rather than dropped."""
    ends = [
        i + 1
        for i, ch in enumerate(cand)
        if ch.isalnum() and (i + 1 == len(cand) or not cand[i + 1].isalnum())
    ]
    for end in reversed(ends):
        if ok(cand[:end]):
            return end
    return None


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        cand = m.group()
        # Try the registered length first, then shorter prefixes ending at a group edge:
        # the greedy candidate may have absorbed a following upper-case word.
        ends = [i + 1 for i, ch in enumerate(cand) if ch not in " -"]
        want = IBAN_LENGTHS.get(cand[:2].upper())
        for n_chars in [want] if want else range(34, 14, -1):
            if n_chars is None or n_chars > len(ends):
                continue
            end = ends[n_chars - 1]
            if end < len(cand) and cand[end] not in " -":
                continue  # would cut a word in half
            if iban_valid(cand[:end].replace(" ", "").replace("-", "")):
                yield m.start(), m.start() + end
                break


def _cn_ids(text: str) -> Iterator[tuple[int, int]]:
    for m in _CN_ID.finditer(text):
        if cn_id_valid(m.group()):
            yield m.span()


def _is_card(s: str) -> bool:
    digits = _digits(s)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _cards(text: str) -> Iterator[tuple[int, int]]:
    # "4111 ... 1111 22" still finds the card in front of an unrelated number.
    for m in _CARD.finditer(text):
        end = _longest(m.group(), _is_card)
        if end is not None:
            yield m.start(), m.start() + end


def _ipv4_valid(value: str) -> bool:
    """A dotted quad with octets 0-255; leading zeros allowed (192.168.001.001)."""
    parts = value.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) <= 255 for p in parts)


def _ipv6(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV6.finditer(text):
        cand = m.group()
        if sum(ch not in ":." for ch in cand) < 3:
            continue  # "::1", "a::b" and friends: no address worth hiding, often not one
        head, _, tail = cand.rpartition(":")
        if "." in tail:  # IPv4-mapped or -embedded: check the quad ourselves (zeros)
            if not _ipv4_valid(tail):
                continue
            cand = head + ":0.0.0.0"
        try:
            ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        yield m.span()


def _ipv4(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        if _ipv4_valid(m.group()):
            yield m.span()


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for pattern, lo, hi in _PHONE_PATTERNS:

        def ok(s: str, lo: int = lo, hi: int = hi) -> bool:
            return lo <= len(_digits(s)) <= hi and not _DATE.fullmatch(s)

        for m in pattern.finditer(text):
            end = _longest(m.group(), ok)
            if end is not None:
                yield m.start(), m.start() + end
    for m in _DIGIT_RUN.finditer(text):
        end = _longest(m.group(), lambda s: 10 <= len(_digits(s)) <= 13)
        window = max(0, m.start() - PHONE_WORD_WINDOW)
        if end is not None and _PHONE_WORD.search(text, window, m.start()):
            yield m.start(), m.start() + end


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
    """Every PII span in ``text``, non-overlapping, sorted by position.

    The detectors see the folded text (:mod:`.normalise`); spans are of ``text``."""
    folded, origin = fold(text)
    taken: list[Finding] = []
    for kind in KINDS:
        for start, end in _DETECTORS[kind](folded):
            if any(start < f.end and f.start < end for f in taken):
                continue
            taken.append(Finding(kind, start, end))
    spans = (Finding(f.kind, *original_span(origin, f.start, f.end)) for f in taken)
    return sorted(spans, key=lambda f: f.start)


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
