"""The PII detector against the project's adversarial corpus (hack/gen_pii_corpus.py).

variants.jsonl: PII values written to get past a filter (separators, tabs, invisible
characters, combining marks, full-width, percent/HTML encoding, glued letters, split
across parts). ordinary.jsonl: texts full of numbers that are not PII. The README's
isolation section quotes the figures these tests measure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mmo_serving.gateway import pii
from mmo_serving.gateway.normalise import fold_view

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "pii_corpus"
TARGET = 0.99


def _load(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


VARIANTS = _load("variants.jsonl")
ORDINARY = _load("ordinary.jsonl")


def _covered(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    """Every visible letter or digit of ``text[start:end]`` lies in a finding."""
    return all(
        any(a <= i < b for a, b in spans)
        for i in range(start, end)
        if fold_view(text[i]).text.isalnum()
    )


def _redacted_single(record: dict) -> bool:
    (text,) = record["parts"]
    ((_, start, end),) = record["pieces"]
    out, counts = pii.redact(text)
    spans = [(f.start, f.end) for f in pii.detect(text)]
    return _covered(text, start, end, spans) and text[start:end] not in out and bool(counts)


def _redacted_parts(record: dict) -> bool:
    parts = record["parts"]
    spans: list[list[tuple[int, int]]] = [[] for _ in parts]
    for f in pii.detect_parts(parts):
        for k, a, b in f.pieces:
            spans[k].append((a, b))
    out, counts = pii.redact_parts(parts)
    return bool(counts) and all(
        _covered(parts[k], a, b, spans[k]) and (b - a < 4 or parts[k][a:b] not in out[k])
        for k, a, b in record["pieces"]
    )


def test_corpus_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen_pii_corpus.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("variants.jsonl", "ordinary.jsonl"):
        assert (tmp_path / name).read_text("utf-8") == (DATA / name).read_text("utf-8"), (
            f"{name} is stale: run python hack/gen_pii_corpus.py"
        )


def test_corpus_is_large_enough_and_covers_every_kind() -> None:
    single = [r for r in VARIANTS if len(r["parts"]) == 1]
    assert len(single) >= 300
    assert len(VARIANTS) - len(single) >= 300  # split across parts
    assert len(ORDINARY) >= 300
    assert {r["kind"] for r in VARIANTS} == set(pii.KINDS)


def test_variants_are_redacted_through_redact() -> None:
    single = [r for r in VARIANTS if len(r["parts"]) == 1]
    missed = [r for r in single if not _redacted_single(r)]
    rate = 1 - len(missed) / len(single)
    shown = [(r["kind"], r["evasion"], r["parts"]) for r in missed[:10]]
    assert rate >= TARGET, f"{rate:.3f} of {len(single)} redacted; missed: {shown}"


def test_variants_are_redacted_through_the_many_strings_path() -> None:
    missed = [r for r in VARIANTS if not _redacted_parts(r)]
    rate = 1 - len(missed) / len(VARIANTS)
    shown = [(r["kind"], r["evasion"], r["parts"]) for r in missed[:10]]
    assert rate >= TARGET, f"{rate:.3f} of {len(VARIANTS)} redacted; missed: {shown}"


def test_ordinary_texts_have_no_finding() -> None:
    flagged = []
    for r in ORDINARY:
        single = Counter[str]()
        for part in r["parts"]:
            single.update(pii.count(part))
        joined = pii.count_parts(r["parts"])
        if single or joined:
            flagged.append((r["parts"], dict(single), dict(joined)))
    assert flagged == []


@pytest.mark.parametrize(
    "text,expected",
    [
        ("card 4111\t1111\n1111 1111 ok", "card [CARD] ok"),
        ("card 4111.1111.1111.1111 ok", "card [CARD] ok"),
        ("card 4111/1111/1111/1111 ok", "card [CARD] ok"),
        ("card 4111_1111_1111_1111 ok", "card [CARD] ok"),
        ("card 4111:1111:1111:1111 ok", "card [CARD] ok"),
        ("card 4111,1111,1111,1111 ok", "card [CARD] ok"),
        ("card 4111\u00b71111\u00b71111\u00b71111 ok", "card [CARD] ok"),
        ("card 4111   1111   1111   1111 ok", "card [CARD] ok"),
        ("card 4111 - 1111 - 1111 - 1111 ok", "card [CARD] ok"),
        ("id 110105.19491231.002X ok", "id [CN_ID] ok"),
        ("IBAN DE89/3704/0044/0532/0130/00 ok", "IBAN [IBAN] ok"),
        # invisible characters that are not format characters, combining marks
        ("card 4\u034f111 1\ufe0f111 1111\u3164 1111 ok", "card [CARD] ok"),
        ("card 4\u2800111 1111 1111 1111 ok", "card [CARD] ok"),
        ("card 4\u0301111 11\u20e311 1111 1111 ok", "card [CARD] ok"),
        ("mail jane\u034f.doe@exa\ufe0fmple.com ok", "mail [EMAIL] ok"),
        # encoded forms
        ("mail jane.doe%40example.com ok", "mail [EMAIL] ok"),
        ("mail jane.doe&#64;example.com ok", "mail [EMAIL] ok"),
        ("mail jane.doe&commat;example&period;com ok", "mail [EMAIL] ok"),
        ("mail jane.doe%2540example.com ok", "mail [EMAIL] ok"),
        ("card %34%31%31%31%20%31%31%31%31%20%31%31%31%31%20%31%31%31%31 ok", "card [CARD] ok"),
        # letters glued to a number that a checksum confirms
        ("ID11010519491231002X ok", "ID[CN_ID] ok"),
        ("card4111111111111111end", "card[CARD]end"),
        ("IBANDE89370400440532013000 ok", "IBAN[IBAN] ok"),
        ("host10.20.30.40 down", "host[IPV4] down"),
        ("电话+8613812345678", "电话[PHONE]"),
    ],
)
def test_evasions_from_the_review_are_caught(text: str, expected: str) -> None:
    out, counts = pii.redact(text)
    assert out == expected
    assert sum(counts.values()) == 1


@pytest.mark.parametrize(
    "text",
    [
        "Amazon order 112-4567890-1234567 shipped",  # a Luhn window inside a longer number
        "USPS 9400 1118 2233 4455 6677 88",
        "years 2019, 2020, 2021, 2022 and 2023",
        "version v1.2.3.4 and lib.so1.2.3.4",
        "request 550e8400-e29b-41d4-a716-446655440000",
        "matrix 04 19 93 47",  # pairs: a French number has ten digits
    ],
)
def test_numbers_that_look_like_values_but_are_not(text: str) -> None:
    assert pii.detect(text) == []


def test_values_split_across_parts_are_found_in_each_part() -> None:
    parts = ["mail jane.doe@exa", "mple.com now", "card 4111 11", "11 1111 1111"]
    findings = pii.detect_parts(parts)
    assert [(f.kind, f.pieces) for f in findings] == [
        ("email", ((0, 5, 17), (1, 0, 8))),
        ("card", ((2, 5, 12), (3, 0, 12))),
    ]
    out, counts = pii.redact_parts(parts)
    assert out == ["mail [EMAIL]", "[EMAIL] now", "card [CARD]", "[CARD]"]
    assert counts == Counter({"email": 1, "card": 1})  # a split value counts once
    assert pii.count_parts(parts) == counts
    # each part alone holds nothing the detectors recognise
    assert all(pii.detect(p) == [] for p in parts)


def test_a_card_split_at_a_group_edge_needs_the_separated_join() -> None:
    parts = ["4111 1111", "1111 1111"]  # joined directly: 41111111 1111 1111 (8-4-4)
    out, counts = pii.redact_parts(parts)
    assert out == ["[CARD]", "[CARD]"] and counts["card"] == 1


def test_parts_without_pii_come_back_unchanged() -> None:
    parts = ["order 12345", "678 items", "", "on 2024-05-01"]
    assert pii.redact_parts(parts) == (parts, Counter())
    assert pii.detect_parts([]) == []
