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
- ``card``: 13-19 digits, first digit 2-6 (the issuer ranges of Visa, Mastercard,
  Amex, Discover, JCB, UnionPay, Diners) and a valid Luhn check digit; written in one
  run, grouped as on a card (4-4-4-4, 4-6-5...) or in equal groups of 3-5 digits with
  the same separator throughout. A window of a longer grouped number (a tracking
  number printed in fours, ``112-4567890-1234567``) is not a card.
- ``cn_id``: 18-character PRC resident identity number: region (first digit 1-8),
  a real birth date, the ISO 7064 MOD 11-2 check character (``0-9`` or ``X``).
- ``iban``: country code of the ISO 13616 registry (:data:`IBAN_LENGTHS`; other codes
  are not detected), two check digits, BBAN of the country's registered length,
  mod-97 remainder 1.
- ``ipv4`` / ``ipv6``: dotted quads with octets up to 255 (leading zeros allowed:
  ``192.168.001.001``) and addresses that :mod:`ipaddress` accepts, IPv4-mapped ones
  (``::ffff:192.0.2.128``) as one span.

Separators: the digits of a card, ID or IBAN may be separated by any short run (up to
:data:`SEP_MAX` characters) of spaces or punctuation (``.``, ``/``, ``_``, ``:``,
``,``, ``·``, several spaces, `` - ``), but not by a list separator (``", "``).
Letters may touch a card, ID or IBAN (``ID11010519491231002X``, ``card4111...``) since
the checksum confirms the value; an IPv4 address may follow a word
(``host10.20.30.40``, not ``v1.2.3.4``); an international phone number may follow
letters (``tel+8613812345678``) and any phone number CJK text.

Views: detection runs on every view of :func:`.normalise.views`: the folded text
(invisible characters and combining marks removed, any whitespace a space, NFKC,
ASCII digits) and, when the text holds percent-encoding or HTML character references,
its decoded form too. Every span maps back to the original text, so that
:func:`redact` replaces exactly the original characters and leaves the rest as the
client wrote it. Findings of several views that overlap become one span.

Many strings: :func:`detect_parts`, :func:`redact_parts` and :func:`count_parts` scan
everything that leaves together (text parts, messages, embedding inputs) as one text,
so that a value split across two parts is found, and map each finding back to the
parts it touches.

Linear time: every pattern either starts at a character found by a plain class scan
and is bounded in length (at most 19 or 34 characters plus separators), or is a
possessive run; e-mail addresses are grown from each ``@`` at most 64 characters to
the left. No input makes the engine backtrack over more than a bounded window
(hack/bench/bench_pii.py measures scan time against size).

Detectors run in the order above-with-overlap-priority (email, iban, cn_id, card, ipv6,
ipv4, phone): a span already claimed by one kind is not reported again by a later one.
A digit group inside a UUID is never reported.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from mmo_serving.gateway.normalise import views

KINDS: tuple[str, ...] = ("email", "iban", "cn_id", "card", "ipv6", "ipv4", "phone")


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


# ------------------------------------------------------------------------------ checksums


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check over a string of decimal digits (check digit last)."""
    if not digits or not digits.isdigit() or not digits.isascii():
        return False
    total = sum(map(int, digits[-1::-2])) + sum(_LUHN_DOUBLED[int(d)] for d in digits[-2::-2])
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

# A separator inside a number: a short run of anything that is not a letter, a digit or
# "@" (spaces, "-", ".", "/", "_", ":", ",", "·", " - "...). Letters are not separators.
_SEP = r"(?:[^\w@]|_)"
SEP_MAX = 4  # characters in one separator run
_SEP_RUN = re.compile(_SEP + "+")
# Punctuation then a space separates items of a list or sentence, not digit groups.
_LIST_SEP = re.compile(r"[,;.:!?] ")
# Groupings of card digits as printed on cards and in forms; other groupings must be
# uniform (equal groups of at least 3 digits, the same separator throughout).
CARD_LAYOUTS = frozenset(
    {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 1), (4, 4, 4, 2), (4, 4, 4, 3)}
)
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")

# Each number pattern is a zero-width look-ahead, so that a candidate may start at every
# group of a longer run ("ref 12 4111 1111 ..."); each match attempt is bounded (at most
# 19 or 34 characters with separators of at most SEP_MAX), so a scan is linear in the
# text's length whatever it holds.
_S = f"{_SEP}{{0,{SEP_MAX}}}"
_CARD = re.compile(rf"(?<![0-9])(?=([2-6](?:{_S}[0-9]){{12,18}}))")
_CN_ID = re.compile(rf"(?<![0-9])(?=([1-8](?:{_S}[0-9]){{16}}{_S}[0-9Xx]))")
_IBAN = re.compile(rf"(?=([A-Za-z]{{2}}(?:{_S}[0-9]){{2}}(?:{_S}[A-Za-z0-9]){{11,30}}))")
# IPv6 candidates: runs of letters, digits, dots and colons (only where such a run
# starts, and holding a colon), checked by ipaddress in _ipv6.
_IPV6_TOKEN = re.compile(r"(?<![0-9A-Za-z_.:])[0-9A-Za-z_.]*+:[0-9A-Za-z_.:]*+")
_HEX_OR_DOT = frozenset("0123456789abcdefABCDEF.")
IPV6_MAX = 45  # characters in the longest written form (IPv4-mapped, no zeros dropped)
_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?!\.?[0-9])(?!\w)")
# The e-mail detector starts from each "@" and looks at most this far either side, so
# that text without "@" costs nothing and text full of them stays linear.
LOCAL_MAX = 64
_LOCAL_CHARS = frozenset(".%+'-_")
_DOMAIN = re.compile(
    r"[^\W_](?:[\w-]{0,61}[^\W_])?(?:\.[^\W_](?:[\w-]{0,61}[^\W_])?){0,8}"
    r"\.(?:[^\W\d_]{2,24}|xn--[a-z0-9-]{2,59})(?![\w-])"
)
# dd.mm.yyyy / yyyy-mm-dd and friends are not phone numbers, nor is a national number
# allowed to start with a date ("05.11.2026 12:30": the "12" is the time)
_DATE = re.compile(r"[0-9]{1,2}([./-])[0-9]{1,2}\1[0-9]{2,4}|[0-9]{4}([./-])[0-9]{1,2}\2[0-9]{1,2}")
_NOT_DATE = r"(?![0-9]{1,2}(?P<sep>[./-])[0-9]{1,2}(?P=sep)[0-9]{4}(?![0-9]))"
# A phone number is not the tail of a longer grouped number (9400 1118 0952 8570 37).
_NOT_AFTER_GROUP = r"(?<![0-9]{3}[ .-])"
# Where a number may start: not inside a word or another number (1,299 / 3.14 / a-b).
# CJK text may touch the number (电话13812345678): only ASCII letters count as a word.
_NUM_START = _NOT_AFTER_GROUP + r"(?<![0-9A-Za-z_+/-])(?<![0-9][.,])"
# (pattern, fewest digits, most digits); a candidate is trimmed at a group edge to fit.
# Digit groups are possessive ({1,5}+): a run of digits splits into groups one way only,
# so a long "+1..." run cannot make the engine try every split.
_PHONE_PATTERNS: tuple[tuple[re.Pattern[str], int, int], ...] = (
    # international: +CC then groups, 8-15 digits in total (E.164)
    (re.compile(r"(?<![0-9+])\+[1-9][0-9]{0,2}(?:[ ./-]?\(?[0-9]{1,5}+\)?){1,6}(?![0-9])"), 8, 15),
    # the same with the 00 international prefix (a separator after the country code):
    # 0044 20 7946 0958, 0049 (0)30 1234567
    (
        re.compile(
            r"(?<![0-9A-Za-z_+])00[1-9][0-9]{0,2}[ ./-]\(?[0-9]{1,5}+\)?"
            r"(?:[ ./-]?\(?[0-9]{1,5}+\)?){0,5}(?![0-9])"
        ),
        10,
        17,
    ),
    # North American (555) 123-4567, 555-123-4567, 555.123.4567
    (
        re.compile(
            _NOT_AFTER_GROUP + r"(?<![0-9A-Za-z_])(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])"
            r"[0-9]{3}[ .-][0-9]{4}(?![0-9A-Za-z_])"
        ),
        10,
        10,
    ),
    # Chinese mobile 13812345678, 138 1234 5678, 138-1234-5678
    (re.compile(_NOT_AFTER_GROUP + r"(?<![0-9])1[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])"), 11, 11),
    # national with trunk 0 (area code, maybe in brackets) and groups: 030 1234 5678,
    # 07700 900123, (030) 1234567, 030/12345678, 06 12 34 56 78, 020-7946-0958
    (
        re.compile(
            _NUM_START + _NOT_DATE + r"(?:\(0[1-9][0-9]{0,4}\) ?|0[1-9][0-9]{0,4}"
            r"(?: ?[./-] ?| ))[0-9]{2,8}+(?:[ .-][0-9]{2,8}+){0,3}(?![0-9A-Za-z_])"
        ),
        8,
        13,
    ),
    # national with trunk 0 written as one run: 02079460958, 0612345678
    (re.compile(_NUM_START + r"0[1-9][0-9]{8,9}(?![0-9A-Za-z_]|[.,][0-9])"), 10, 11),
)
# The character each pattern above starts with (see _matches).
_PHONE_FIRST = tuple(
    re.compile(f"{c}(?<![0-9]{c})") for c in (r"\+", "0", r"[(2-9]", "1", r"[(0]", "0")
)
# Any run of 10-13 digits (grouped or not) is a phone number after a phone word.
_DIGIT_RUN = re.compile(
    _NUM_START + r"[0-9]{2,}+(?:[ .-][0-9]{2,}+){0,5}(?![0-9A-Za-z_]|[.,][0-9])"
)
_PHONE_WORD = re.compile(
    r"(?i)\b(?:tel|phone|call|mobile|mob|cell|fax|whatsapp|sms|contact|handy)"
    r"|电话|電話|手机|手機|联系|聯繫|致电"
)
_PAIRS = re.compile(r"[0-9]{2}(?:[ .-][0-9]{2})+")
PHONE_WORD_WINDOW = 30  # characters before the number where a phone word counts


# The first digit of a run (a number never starts after another digit).
_DIGIT = re.compile("[0-9](?<![0-9][0-9])")
_CARD_FIRST = re.compile("[2-6](?<![0-9][2-6])")
_CN_ID_FIRST = re.compile("[1-8](?<![0-9][1-8])")
# IBAN heads "DE89" and "DE 89": found from the first check digit, which is rarer than a
# letter (the offset is where the country code starts).
_IBAN_HEADS = (
    (re.compile("[0-9](?<=[A-Za-z]{2}[0-9])"), 2),
    (re.compile(f"[0-9](?<=[A-Z]{{2}}{_SEP}[0-9])"), 3),
)


def _matches(
    pattern: re.Pattern[str], first: re.Pattern[str], text: str, overlapping: bool = False
) -> Iterator[re.Match[str]]:
    """``pattern.finditer(text)``, tried only where ``first`` matches (the character a
    match starts with, and not after a digit): Python's engine would otherwise evaluate
    the leading look-behinds at every position, and the loop here would run once per
    digit. Look-behinds still see the text before each start."""
    last = 0
    for m0 in first.finditer(text):
        pos = m0.start()
        if pos < last:
            continue
        m = pattern.match(text, pos)
        if m is not None:
            if not overlapping:
                last = max(m.end(), pos + 1)
            yield m


_NOT_DIGIT = re.compile(r"\D+")
_NOT_ALNUM = re.compile(r"[\W_]+")
_GROUP = re.compile(r"[^\W_]+")


def _digits(s: str) -> str:
    return _NOT_DIGIT.sub("", s)


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


def _number_ends(text: str, start: int, cand: str) -> list[tuple[int, int]]:
    """``(end, characters)`` of the prefixes of ``cand`` that end a digit group (the next
    character of ``text`` is not a digit; letters may follow, ``...1111abc``: the
    checksum decides), with the count of letters and digits in each prefix."""
    out = []
    count = 0
    for m in _GROUP.finditer(cand):
        count += m.end() - m.start()
        out.append((m.end(), count))
    after = start + len(cand)
    if out and out[-1][0] == len(cand) and after < len(text) and text[after].isdigit():
        out.pop()  # the candidate stopped inside a longer run of digits
    return out


def _separators(s: str) -> list[str]:
    return [" " if not sep.strip() else re.sub(r"\s+", " ", sep) for sep in _SEP_RUN.findall(s)]


def _grouping_ok(s: str) -> bool:
    """Card digits grouped as on a card, or uniformly; never as items of a list."""
    if _LIST_SEP.search(s):
        return False
    seps = _separators(s)
    if not seps:
        return True
    sizes = tuple(len(g) for g in re.findall(r"[0-9]+", s))
    if sizes in CARD_LAYOUTS:
        return True
    head = sizes[:-1]
    return len(set(seps)) == 1 and len(set(head)) == 1 and 3 <= head[0] <= 5 >= sizes[-1]


_GROUP_BEFORE = re.compile(rf"(?<![0-9])[0-9]{{3,}}({_SEP}{{1,{SEP_MAX}}})\Z")
_GROUP_AFTER = re.compile(rf"({_SEP}{{1,{SEP_MAX}}})[0-9]{{3}}")


def _inside_longer_number(text: str, start: int, end: int) -> bool:
    """Whether the digits at ``start:end`` continue, with the same separator, into a
    group of 3+ digits on either side: a window of a tracking or order number
    (9400 1118 2233 4455 6677 88, 112-4567890-1234567), not a value of its own."""
    seps = _separators(text[start:end])
    if not seps:
        return False
    before = _GROUP_BEFORE.search(text[max(0, start - 16) : start])
    after = _GROUP_AFTER.match(text, end)
    return any(m is not None and _separators(m.group(1)) == seps[:1] for m in (before, after))


def _emails(text: str) -> Iterator[tuple[int, int]]:
    last = 0
    for at in (m.start() for m in re.finditer("@", text)):
        start = at
        while start > last and at - start < LOCAL_MAX:
            ch = text[start - 1]
            if not (ch.isalnum() or ch in _LOCAL_CHARS):
                break
            start -= 1
        while start < at and text[start] == "'":  # 'bob@example.com' is quoted
            start += 1
        if start == at:
            continue
        m = _DOMAIN.match(text, at + 1)
        if m is not None:
            last = m.end()
            yield start, m.end()


def _iban_candidates(text: str) -> Iterator[re.Match[str]]:
    for head, offset in _IBAN_HEADS:
        for h in head.finditer(text):
            m = _IBAN.match(text, h.start() - offset)
            if m is not None:
                yield m


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    last = 0
    for m in sorted(_iban_candidates(text), key=lambda m: m.start()):
        start, cand = m.start(1), m.group(1)
        if start < last:
            continue
        country = cand[:2]
        want = IBAN_LENGTHS.get(country.upper())
        if want is None:
            continue
        glued = start > 0 and text[start - 1].isalnum()
        if glued and (text[start - 1].isdigit() or not country.isupper()):
            continue  # "IBANDE89...": only with the country in capitals
        if not cand[2:4].isdigit() and (glued or not country.isupper()):
            continue  # "DE 89 ..." with a separator in the head: capitals ("de 89" is French)
        ends = [i + 1 for i, ch in enumerate(cand) if ch.isalnum()]
        if want > len(ends):
            continue
        end = ends[want - 1]
        nxt = text[start + end] if start + end < len(text) else ""
        # the value ends at a group edge, or where letters follow a final digit
        # ("...3000BANK")
        if nxt.isalnum() and not (cand[end - 1].isdigit() and nxt.isalpha()):
            continue
        if iban_valid("".join(ch for ch in cand[:end] if ch.isalnum())):
            last = start + end
            yield start, start + end


def _checked_numbers(
    pattern: re.Pattern[str],
    first: re.Pattern[str],
    text: str,
    sizes: tuple[int, int],
    ok: Callable[[str], bool],
    alone: bool = False,
) -> Iterator[tuple[int, int]]:
    """Spans of the longest prefix (ending a group, ``sizes`` digits long) of each
    candidate that ``ok`` takes; a candidate starting inside a span already found is
    skipped. With ``alone``, a candidate inside a longer grouped number is not taken
    either."""
    lo, hi = sizes
    last = 0
    for m in _matches(pattern, first, text, overlapping=True):
        start, cand = m.start(1), m.group(1)
        if start < last:
            continue
        after = start + len(cand)
        if lo == hi:  # a fixed length: only the whole candidate can fit
            whole = after >= len(text) or not text[after].isdigit()
            ends = [(len(cand), hi)] if whole else []
        else:
            ends = _number_ends(text, start, cand)
        for end, n in reversed(ends):
            if not lo <= n <= hi or not ok(cand[:end]):
                continue
            if alone and _inside_longer_number(text, start, start + end):
                continue
            last = start + end
            yield start, start + end
            break


def _is_cn_id(s: str) -> bool:
    compact = _NOT_ALNUM.sub("", s)
    return len(compact) == 18 and not _LIST_SEP.search(s) and cn_id_valid(compact)


def _cn_ids(text: str) -> Iterator[tuple[int, int]]:
    return _checked_numbers(_CN_ID, _CN_ID_FIRST, text, (18, 18), _is_cn_id)


def _is_card(s: str) -> bool:
    digits = _digits(s)
    return 13 <= len(digits) <= 19 and luhn_valid(digits) and _grouping_ok(s)


def _cards(text: str) -> Iterator[tuple[int, int]]:
    # "4111 ... 1111 22" still finds the card in front of an unrelated number.
    return _checked_numbers(_CARD, _CARD_FIRST, text, (13, 19), _is_card, alone=True)


def _ipv4_valid(value: str) -> bool:
    """A dotted quad with octets 0-255; leading zeros allowed (192.168.001.001)."""
    parts = value.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) <= 255 for p in parts)


def _ipv6_in(token: str) -> tuple[int, int] | None:
    """The span of the IPv6 address that ``token`` (a run of letters, digits, dots and
    colons) ends with, or None: a label in front is cut off ("ref:fe80::1",
    "IPv6:2001:db8::1"), dots at the end too ("... 2001:db8::7.")."""
    end = len(token.rstrip("."))
    window = max(0, end - IPV6_MAX - 1)  # an address is never longer than this
    start = None if window else 0
    pos = window
    for seg in token[window:end].split(":")[:-1]:
        pos += len(seg) + 1
        if any(ch not in _HEX_OR_DOT for ch in seg):
            start = pos  # after the label
    if start is None:
        return None  # a long run of hex and colons, not one address
    cand = token[start:end]
    if cand.count(":") < 2 or sum(ch not in ":." for ch in cand) < 3:
        return None  # "::1", "a::b" and friends: no address worth hiding, often not one
    head, _, tail = cand.rpartition(":")
    if "." in tail:  # IPv4-mapped or -embedded: check the quad ourselves (zeros)
        if not _ipv4_valid(tail):
            return None
        cand = head + ":0.0.0.0"
    try:
        ipaddress.IPv6Address(cand)
    except ValueError:
        return None
    return start, end


def _ipv6(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV6_TOKEN.finditer(text):
        span = _ipv6_in(m.group())
        if span is not None:
            yield m.start() + span[0], m.start() + span[1]


def _ipv4(text: str) -> Iterator[tuple[int, int]]:
    for m in _matches(_IPV4, _DIGIT, text):
        if not _ipv4_valid(m.group()):
            continue
        word = m.start()
        while word > 0 and (text[word - 1].isalnum() or text[word - 1] == "_"):
            word -= 1
        # glued to a word ("host10.20.30.40") counts, but "v1.2.3.4" is a version and
        # "lib.so1.2.3.4" a file name
        if word < m.start() and (
            text[word : m.start()].lower() == "v" or (word > 0 and text[word - 1] == ".")
        ):
            continue
        yield m.span()


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for (pattern, lo, hi), first in zip(_PHONE_PATTERNS, _PHONE_FIRST, strict=True):

        def ok(s: str, lo: int = lo, hi: int = hi) -> bool:
            n = len(_digits(s))
            if _PAIRS.fullmatch(s) and n < 10:
                return False  # 06 12 34 56 78 has ten digits; fewer pairs are a table
            return lo <= n <= hi and not _DATE.fullmatch(s)

        for m in _matches(pattern, first, text):
            end = _longest(m.group(), ok)
            if end is not None:
                yield m.start(), m.start() + end
    for m in _matches(_DIGIT_RUN, _DIGIT, text):
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
# A UUID is an identifier, not a number: digit groups inside it are not PII.
_NOT_IN_UUID = frozenset({"iban", "cn_id", "card", "ipv4", "phone"})


class _Spans:
    """Non-overlapping spans, sorted; an overlap test costs O(log n). Spans are added
    in increasing order as a rule (each detector yields them so), which appends."""

    def __init__(self, spans: list[tuple[int, int]] | None = None) -> None:
        spans = sorted(spans or [])
        self.starts = [s for s, _ in spans]
        self.ends = [e for _, e in spans]

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, start)
        if i > 0 and self.ends[i - 1] > start:
            return True
        return i < len(self.starts) and self.starts[i] < end

    def add(self, start: int, end: int) -> None:
        i = bisect.bisect_right(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends, strict=True))


def _scan(text: str) -> list[Finding]:
    """Findings in one view, in the detectors' priority order, non-overlapping."""
    uuids = _Spans([m.span() for m in _UUID.finditer(text)])
    earlier = _Spans()  # spans of the kinds before this one (fixed while a kind runs)
    out: list[Finding] = []
    for kind in KINDS:
        this = _Spans()
        for start, end in _DETECTORS[kind](text):
            if earlier.overlaps(start, end) or this.overlaps(start, end):
                continue
            if kind in _NOT_IN_UUID and uuids.overlaps(start, end):
                continue
            this.add(start, end)
            out.append(Finding(kind, start, end))
        earlier = _Spans(earlier.spans() + this.spans())
    return out


def _merge(found: list[Finding]) -> list[Finding]:
    """Overlapping findings (from several views) as one span, with the first one's kind."""
    out: list[Finding] = []
    for f in sorted(found, key=lambda f: (f.start, -f.end)):
        if out and f.start < out[-1].end:
            last = out[-1]
            out[-1] = Finding(last.kind, last.start, max(last.end, f.end))
        else:
            out.append(f)
    return out


def detect(text: str) -> list[Finding]:
    """Every PII span in ``text``, non-overlapping, sorted by position.

    The detectors see the folded text and its decoded form (:func:`.normalise.views`);
    spans are of ``text``."""
    found = []
    for view in views(text):
        for f in _scan(view.text):
            found.append(Finding(f.kind, *view.span(f.start, f.end)))
    return _merge(found)


def placeholder(kind: str) -> str:
    return f"[{kind.upper()}]"


def _replace(text: str, findings: Sequence[Finding]) -> str:
    out: list[str] = []
    pos = 0
    for f in findings:
        out.append(text[pos : f.start])
        out.append(placeholder(f.kind))
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


def redact(text: str) -> tuple[str, Counter[str]]:
    """``text`` with every finding replaced by ``[KIND]``, and the count per kind."""
    findings = detect(text)
    return _replace(text, findings), Counter(f.kind for f in findings)


def count(text: str) -> Counter[str]:
    return Counter(f.kind for f in detect(text))


# ------------------------------------------------------------------------------ many strings

# Between parts in the separated join: folds to a space, which no value spans but digit
# groups do ("4111 1111" + "1111 1111" is one card).
PART_SEPARATOR = "\n"


@dataclass(frozen=True)
class PartFinding:
    """A finding in a list of strings: ``pieces`` are ``(part, start, end)``, one per
    part it touches (a value split across parts has several)."""

    kind: str
    pieces: tuple[tuple[int, int, int], ...]


def detect_parts(parts: Sequence[str]) -> list[PartFinding]:
    """Every PII value in ``parts`` (text parts, messages, embedding inputs: everything
    that leaves together), including values split across neighbouring parts.

    The parts are scanned as one text twice, joined directly ("jane.doe@exa" +
    "mple.com") and joined with :data:`PART_SEPARATOR` ("4111 1111" + "1111 1111");
    the findings of both are merged and mapped back to each part."""
    offsets = [0]
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    found = list(detect("".join(parts)))
    if len(parts) > 1:
        sep = len(PART_SEPARATOR)
        spaced = [off + k * sep for k, off in enumerate(offsets[:-1])]

        def joined(i: int, end: bool) -> int:
            k = bisect.bisect_right(spaced, i - 1 if end else i) - 1
            return min(i - k * sep, offsets[k + 1])

        for f in detect(PART_SEPARATOR.join(parts)):
            found.append(Finding(f.kind, joined(f.start, False), joined(f.end, True)))
    out = []
    for f in _merge(found):
        first = bisect.bisect_right(offsets, f.start) - 1
        pieces = []
        for k in range(first, len(parts)):
            if offsets[k] >= f.end:
                break
            start, end = max(f.start, offsets[k]), min(f.end, offsets[k + 1])
            if start < end:
                pieces.append((k, start - offsets[k], end - offsets[k]))
        out.append(PartFinding(f.kind, tuple(pieces)))
    return out


def _count(parts: Sequence[str], findings: list[PartFinding]) -> Counter[str]:
    """Values found in each part alone, plus those only found across parts (a value
    split across parts counts once). Joining can glue neighbouring values into one
    span, so the parts alone give the truer count."""
    counts: Counter[str] = Counter()
    alone: list[list[Finding]] = [list(detect(p)) for p in parts]
    for found in alone:
        counts.update(f.kind for f in found)
    for f in findings:
        if len(f.pieces) > 1 and not any(
            a.start < end and start < a.end for k, start, end in f.pieces for a in alone[k]
        ):
            counts[f.kind] += 1
    return counts


def redact_parts(parts: Sequence[str]) -> tuple[list[str], Counter[str]]:
    """``parts`` with every piece of every finding replaced by ``[KIND]``, and the count
    per kind."""
    per_part: list[list[Finding]] = [[] for _ in parts]
    findings = detect_parts(parts)
    for f in findings:
        for k, start, end in f.pieces:
            per_part[k].append(Finding(f.kind, start, end))
    redacted = [_replace(p, fs) for p, fs in zip(parts, per_part, strict=True)]
    return redacted, _count(parts, findings)


def count_parts(parts: Sequence[str]) -> Counter[str]:
    return _count(parts, detect_parts(parts))
