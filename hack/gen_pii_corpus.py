"""Generate the PII detector's adversarial corpus (deterministic: fixed seed).

    python hack/gen_pii_corpus.py            # writes tests/unit/data/pii_corpus/*.jsonl

variants.jsonl: one PII value per record, written the way people (and people who want a
value past a filter) write it: separators of every kind between digit groups, tabs and
newlines, invisible characters, combining marks, full-width forms, percent-encoding,
HTML entities, letters glued to the number, the value split across two or three parts
(text parts, messages, embedding inputs). A record is ``{"kind", "evasion", "parts",
"pieces"}``; ``pieces`` are ``[part, start, end]``: where the value sits in each part.

ordinary.jsonl: texts that hold no PII but plenty of numbers: dates, times, prices,
versions, order, invoice and tracking numbers, ISBNs, UUIDs, hashes, measurements.
A record is ``{"parts"}`` (one to three parts).

tests/unit/test_gateway_pii_corpus.py checks the files are what this script writes, and
measures the detector on them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "unit" / "data" / "pii_corpus"
SEED = 20261203

# ------------------------------------------------------------------------------ values


def _luhn_digit(body: str) -> str:
    for d in "0123456789":
        total = 0
        for i, ch in enumerate(reversed(body + d)):
            n = int(ch) * (2 if i % 2 else 1)
            total += n - 9 if n > 9 else n
        if total % 10 == 0:
            return d
    raise AssertionError("unreachable")


def card(rng: random.Random) -> tuple[str, list[int]]:
    prefix, length, layout = rng.choice(
        [
            ("4", 16, [4, 4, 4, 4]),
            ("5" + rng.choice("12345"), 16, [4, 4, 4, 4]),
            ("3" + rng.choice("47"), 15, [4, 6, 5]),
            ("6011", 16, [4, 4, 4, 4]),
            ("35", 16, [4, 4, 4, 4]),
            ("62", 19, [4, 4, 4, 4, 3]),
        ]
    )
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + _luhn_digit(body), layout


_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def cn_id(rng: random.Random) -> tuple[str, list[int]]:
    region = rng.choice(["110105", "440308", "310101", "510104", "330106", "220102"])
    born = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    head = region + born + f"{rng.randint(0, 999):03d}"
    check = "10X98765432"[sum(int(c) * w for c, w in zip(head, _CN_WEIGHTS, strict=True)) % 11]
    return head + check, [6, 8, 4]


def iban(rng: random.Random) -> tuple[str, list[int]]:
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    letters = lambda n: "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(n))  # noqa: E731
    country, bban = rng.choice(
        [
            ("DE", digits(18)),
            ("GB", letters(4) + digits(14)),
            ("FR", digits(10) + letters(1) + digits(10) + digits(2)),
            ("NL", letters(4) + digits(10)),
            ("CH", digits(17)),
            ("ES", digits(20)),
            ("IT", letters(1) + digits(10) + digits(12)),
        ]
    )
    rearranged = bban + country + "00"
    check = 98 - int("".join(str(int(ch, 36)) for ch in rearranged)) % 97
    value = f"{country}{check:02d}{bban}"
    n = len(value)
    return value, [4] * (n // 4) + ([n % 4] if n % 4 else [])


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            f"+44 20 7946 {d(4)}",
            f"+1 415 555 {d(4)}",
            f"+86 138 {d(4)} {d(4)}",
            f"+49 30 {d(4)} {d(4)}",
            f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"(415) 555-{d(4)}",
            f"212-555-{d(4)}",
            f"030 {d(4)} {d(4)}",
            f"07700 900{d(3)}",
            f"13{rng.choice('3456789')}{d(8)}",
            f"0044 20 7946 {d(4)}",
        ]
    )


def email(rng: random.Random) -> str:
    first = rng.choice(["jane", "li.wei", "o'neil", "max_power", "anna-lena", "zoe", "k.tan"])
    tag = rng.choice(["", "+work", "2024", ".x"])
    host = rng.choice(["example.com", "mail.example.org", "uni-bonn.de", "corp.co.uk", "qq.cn"])
    return f"{first}{tag}@{host}"


def ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(4)]
    return rng.choice(
        [
            "2001:db8:" + ":".join(groups) + "::1",
            "fe80::" + ":".join(groups),
            "2001:0db8:85a3:0000:0000:8a2e:" + groups[0] + ":" + groups[1],
        ]
    )


# ------------------------------------------------------------------------------ evasions

INVISIBLE = {
    "zwsp": "\u200b",
    "cgj": "\u034f",
    "vs16": "\ufe0f",
    "hangul_filler": "\u3164",
    "braille_blank": "\u2800",
    "soft_hyphen": "\u00ad",
    "word_joiner": "\u2060",
    "mongolian_fvs": "\u180b",
}
SEPARATORS = {
    "sep_dot": ".",
    "sep_slash": "/",
    "sep_underscore": "_",
    "sep_colon": ":",
    "sep_comma": ",",
    "sep_middle_dot": "\u00b7",
    "sep_spaces": "   ",
    "sep_spaced_hyphen": " - ",
    "sep_tab": "\t",
    "sep_newline": "\n",
    "sep_nbsp": "\u00a0",
}


def _interleave(value: str, mark: str, every: int = 1) -> str:
    return "".join(ch + (mark if (i + 1) % every == 0 else "") for i, ch in enumerate(value))


def _fullwidth(value: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else "\u3000" for ch in value)


def _percent(value: str) -> str:
    return "".join(f"%{b:02X}" for b in value.encode())


def _html(value: str, hexa: bool) -> str:
    return "".join(f"&#x{ord(ch):x};" if hexa else f"&#{ord(ch)};" for ch in value)


def _grouped(value: str, layout: list[int], sep: str) -> str:
    out, pos = [], 0
    for n in layout:
        out.append(value[pos : pos + n])
        pos += n
    return sep.join(out)


def _arabic_digits(value: str) -> str:
    return "".join(chr(0x0660 + int(ch)) if ch.isdigit() else ch for ch in value)


CONTEXTS = [
    "Please use {v} for this.",
    "my details: {v}",
    "{v}",
    "Hi team, the value is {v} - thanks!",
    "我的信息是{v}，谢谢。",
    "ref:{v};",
    "Bitte nutzen Sie {v} ab morgen.",
    "(see {v})",
    "Note\n{v}\nend",
]

Kind = str
Maker = Callable[[random.Random], tuple[str, str]]  # (written value, evasion)


def _variants_for(kind: Kind, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(evasion, written value, letters glued in front, letters glued behind)."""
    numeric = kind in ("card", "cn_id", "iban")
    out: list[tuple[str, str, str, str]] = []

    def value() -> tuple[str, list[int]]:
        if kind == "card":
            return card(rng)
        if kind == "cn_id":
            return cn_id(rng)
        if kind == "iban":
            return iban(rng)
        simple = {"phone": phone, "email": email, "ipv4": ipv4, "ipv6": ipv6}[kind](rng)
        return simple, []

    def shown() -> str:
        v, layout = value()
        return _grouped(v, layout, " ") if layout else v

    for _ in range(2):
        out.append(("plain", shown(), "", ""))
        for name, mark in INVISIBLE.items():
            out.append((name, _interleave(shown(), mark, rng.choice([1, 2, 3])), "", ""))
        out.append(("combining_acute", _interleave(shown(), "\u0301", 2), "", ""))
        out.append(("fullwidth", _fullwidth(shown()), "", ""))
        out.append(("percent", _percent(shown()), "", ""))
        out.append(("html_decimal", _html(shown(), hexa=False), "", ""))
        out.append(("html_hex", _html(shown(), hexa=True), "", ""))
        if kind != "email":
            out.append(("keycap", _interleave(shown(), "\u20e3", 3), "", ""))
            out.append(("arabic_indic_digits", _arabic_digits(shown()), "", ""))
        if kind == "email":
            e = shown()
            out.append(("percent_at", e.replace("@", "%40").replace(".", "%2E"), "", ""))
            out.append(("html_named", e.replace("@", "&commat;").replace(".", "&period;"), "", ""))
            out.append(("double_percent", e.replace("@", "%2540"), "", ""))
            out.append(("upper_case", e.upper(), "", ""))
        if numeric:
            for name, sep in SEPARATORS.items():
                v, layout = value()
                out.append((name, _grouped(v, layout, sep), "", ""))
            v, layout = value()
            out.append(("glued_letters", v, rng.choice(["ID", "No", "card", "IBAN", "x"]), ""))
            v, layout = value()
            out.append(("glued_both_sides", v, rng.choice(["ID", "Nr"]), "ok"))
        if kind == "ipv4":
            out.append(("glued_letters", shown(), rng.choice(["host", "ip", "srv"]), ""))
        if kind == "phone":  # no checksum: only the international + form may be glued
            international = next(v for v in iter(shown, None) if v.startswith("+"))
            out.append(("glued_letters", international, rng.choice(["tel", "ph", "Tel"]), ""))
        if kind == "phone" or kind == "card":
            out.append(
                ("tab_newline", shown().replace(" ", rng.choice(["\t", "\n", "\r\n"])), "", "")
            )
    return out


def variants(rng: random.Random) -> list[dict]:
    records = []
    for kind in ("email", "phone", "card", "cn_id", "iban", "ipv4", "ipv6"):
        for evasion, written, glued, glued_after in _variants_for(kind, rng):
            context = rng.choice(CONTEXTS)
            before, after = context.split("{v}")
            before += glued
            after = glued_after + after
            text = before + written + after
            start, end = len(before), len(before) + len(written)
            records.append(
                {"kind": kind, "evasion": evasion, "parts": [text], "pieces": [[0, start, end]]}
            )
            # the same value split across two or three parts (messages, text parts)
            cut = rng.randint(1, len(written) - 1)
            parts = [before + written[:cut], written[cut:] + after]
            pieces = [[0, start, start + cut], [1, 0, len(written) - cut]]
            if len(written) - cut > 2 and rng.random() < 0.3:
                cut2 = rng.randint(1, len(written) - cut - 1)
                parts = [parts[0], parts[1][:cut2], parts[1][cut2:]]
                pieces = [pieces[0], [1, 0, cut2], [2, 0, len(written) - cut - cut2]]
            records.append(
                {"kind": kind, "evasion": "split+" + evasion, "parts": parts, "pieces": pieces}
            )
    return records


# ------------------------------------------------------------------------------ ordinary


def _ordinary_snippets(rng: random.Random) -> list[Callable[[], str]]:
    d = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    up = lambda n: "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(n))  # noqa: E731
    hexs = lambda n: "".join(rng.choice("0123456789abcdef") for _ in range(n))  # noqa: E731
    y = lambda: rng.randint(1990, 2030)  # noqa: E731
    m = lambda: rng.randint(1, 12)  # noqa: E731
    day = lambda: rng.randint(1, 28)  # noqa: E731
    r = rng.randint
    hm = lambda: f"{r(0, 23):02d}:{r(0, 59):02d}"  # noqa: E731
    return [
        lambda: f"The meeting is on {y()}-{m():02d}-{day():02d} at {hm()}.",
        lambda: f"Due {day():02d}.{m():02d}.{y()} {hm()}:{r(0, 59):02d}",
        lambda: f"shipped {m():02d}/{day():02d}/{y()}",
        lambda: f"{y()}年{m()}月{day()}日发货",
        lambda: f"from {y()} to {y()}",
        lambda: f"timestamp {y()}-{m():02d}-{day():02d}T{hm()}:{r(0, 59):02d}Z",
        lambda: f"It costs ${r(1, 9)},{d(3)}.{d(2)} (was {r(100, 9999)}.{d(2)} EUR).",
        lambda: f"Total: {r(1, 999)},{d(3)},{d(3)}.{d(2)} USD",
        lambda: f"Preis {r(1, 999)}.{d(3)},{d(2)} €",
        lambda: f"¥{r(1, 99)},{d(3)} incl. tax",
        lambda: f"upgrade to v{r(0, 30)}.{r(0, 99)}.{r(0, 99)}",
        lambda: f"numpy {r(1, 2)}.{r(0, 30)}.{r(0, 9)} and python 3.{r(8, 13)}",
        lambda: f"Chrome {r(100, 140)}.0.{r(4000, 7000)}.{r(100, 300)}",
        lambda: f"Windows 10.0.{r(17000, 26000)}.{r(1000, 5000)}",
        lambda: f"release {r(1, 9)}.{r(0, 60)}.{r(0, 9)}-rc{r(1, 5)}",
        lambda: f"order {d(8)} confirmed",
        lambda: f"Order #{r(1, 9)}{d(r(5, 9))}",
        lambda: f"Amazon order 1{d(2)}-{d(7)}-{d(7)}",
        lambda: f"invoice INV-{y()}-{d(5)}",
        lambda: f"PO 45{d(8)}",
        lambda: f"ticket ORD-{y()}-{d(6)}-{d(2)}",
        lambda: f"UPS tracking 1Z{up(3)}{d(3)}{up(2)}{d(8)}",
        lambda: f"USPS 9400 {d(4)} {d(4)} {d(4)} {d(4)} {d(2)}",
        lambda: f"USPS {9}{d(21)}",
        lambda: f"FedEx 7{d(3)} {d(4)} {d(4)}",
        lambda: f"DHL JD01{d(16)}",
        lambda: f"ISBN 978-{r(0, 9)}-{d(2)}-{d(6)}-{r(0, 9)}",
        lambda: f"request id {hexs(8)}-{hexs(4)}-4{hexs(3)}-a{hexs(3)}-{hexs(12)}",
        lambda: f"commit {hexs(40)}",
        lambda: f"sha256 {hexs(64)}",
        lambda: f"room {r(100, 1999)}, floor {r(1, 40)}",
        lambda: f"coordinates {r(-89, 89)}.{d(4)}, {r(-179, 179)}.{d(4)}",
        lambda: f"ratio 16:9, {r(1, 99)}% done, {r(1, 999)} MB of {r(1, 64)} GB",
        lambda: f"score {r(0, 9)}:{r(0, 9)} after {r(1, 120)} minutes",
        lambda: f"I have {r(2, 9)} red circles and {r(2, 9)} squares",
        lambda: f"section {r(1, 9)}.{r(1, 9)}.{r(1, 9)}",
        lambda: f"zip {d(5)} Dresden",
        lambda: f"pi is {3}.{d(12)}",
        lambda: f"flight LH{r(100, 9999)} at gate B{r(1, 60)}",
        lambda: f"SKU {up(2)}-{d(4)}-{up(1)}{d(2)}",
        lambda: f"measured {r(1, 999)}.{d(3)} mm ± {r(1, 9)}.{d(2)}",
        lambda: f"port {r(1024, 65535)} on localhost",
        lambda: f"page {r(1, 400)} of {r(400, 900)}",
        lambda: f"batch {y()}{m():02d}{day():02d}-{d(3)}",
        lambda: f"The hotel booking {d(10)} is confirmed.",
        lambda: f"serial {up(3)}{d(9)}",
        lambda: " ".join(["matrix", *(str(r(10, 99)) for _ in range(4))]),
        lambda: f"years {y()}, {y()}, {y()} and {y()}",
    ]


def ordinary(rng: random.Random, n: int = 360) -> list[dict]:
    snippets = _ordinary_snippets(rng)
    records = []
    for i in range(n):
        texts = [rng.choice(snippets)() for _ in range(rng.randint(2, 4))]
        sep = rng.choice([" ", "\n", "; ", "\t"])
        if i % 3 == 0:  # the same texts as separate parts (messages, embedding inputs)
            records.append({"parts": texts})
        else:
            records.append({"parts": [sep.join(texts)]})
    # every snippet alone, too
    for make in snippets:
        records.append({"parts": [make()]})
    return records


def corpus() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    return {"variants.jsonl": variants(rng), "ordinary.jsonl": ordinary(rng)}


def render(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the .jsonl files")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for name, records in corpus().items():
        (out / name).write_text(render(records), encoding="utf-8")
        print(f"{out / name}: {len(records)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
