"""PII detectors: valid values are found, near-misses (one checksum digit off) are not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmo_serving.gateway import pii

VALID = {
    "email": [
        "jane.doe@example.com",
        "x_y+tag@mail.sub.example.org",
        "A1@B2.io",
        "jane_o'neil@example.org",
        "jöhn.müller@bücher.de",
    ],
    "phone": [
        "+1 415 555 2671",
        "+44 20 7946 0958",
        "+8613812345678",
        "(415) 555-2671",
        "415-555-2671",
        "13812345678",
        "138 1234 5678",
        "030 1234 5678",
        "06 12 34 56 78",
        "07700 900123",  # UK mobile
        "01632 960983",  # UK geographic
        "07911 123456",
        "030 12345678",  # German, one group after the area code
        "(030) 1234567",
        "0171 1234567",
        "030/12345678",
        "0044 20 7946 0958",  # 00 international prefix
        "0049 (0)30 1234567",
        "02079460958",  # national number as one run
        "555-123-4567",
    ],
    "card": [
        "4111111111111111",
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "378282246310005",
        "6011111111111117",
        "4012 8888 8888 1881",
    ],
    "cn_id": ["11010519491231002X", "11010519491231002x", "440308199901010012"],
    "iban": [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "CH93 0076 2011 6238 5295 7",
        "DE89-3704-0044-0532-0130-00",
        "DE89  3704  0044  0532  0130  00",
    ],
    "ipv4": ["10.0.0.1", "192.168.100.200", "8.8.8.8", "192.168.001.001"],
    "ipv6": [
        "2001:db8::1",
        "fe80::1ff:fe23:4567:890a",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "::ffff:192.0.2.128",
        "::ffff:192.168.001.001",
    ],
}

# Each near-miss differs from a valid value by one character, or breaks one rule.
NEAR_MISSES = {
    "card": [
        "4111111111111112",  # Luhn digit off by one
        "5555555555554445",
        "378282246310006",
        "1234567812345670",  # Luhn-valid but no issuer starts with 1
        "411111111111",  # 12 digits: too short
    ],
    "cn_id": [
        "110105194912310021",  # check character should be X
        "440308199901010013",  # check digit off by one
        "110105194902310028",  # 31 February
        "910105194912310027",  # region 9 does not exist
    ],
    "iban": [
        "DE89370400440532013001",  # mod-97 fails
        "DE98370400440532013000",  # check digits transposed
        "DE8937040044053201300",  # 21 characters: DE IBANs have 22
        "GB82WEST12345698765433",
        "NL91ABNA0417164301",
    ],
    "ipv4": ["256.1.1.1", "10.0.0.999", "192.168.001.256"],
    "ipv6": ["1:2:3:4:5:6:7:8:9", "12:30:45", "a::b"],
    "email": ["jane.doe@", "@example.com", "user@localhost"],
    "phone": [
        "12345678",
        "01-05-2024",
        "2024-05-01",
        "4155552671000000000",
        "5551234567",  # a bare run with no phone word before it
        "0171 123",  # too short
        "0044 to 0055",
    ],
}


@pytest.mark.parametrize("kind,value", [(k, v) for k, vs in VALID.items() for v in vs])
def test_detects_valid_value_in_sentence(kind: str, value: str) -> None:
    text = f"Please use {value} for this."
    found = pii.detect(text)
    assert [(f.kind, text[f.start : f.end]) for f in found] == [(kind, value)]


@pytest.mark.parametrize("kind,value", [(k, v) for k, vs in NEAR_MISSES.items() for v in vs])
def test_near_miss_is_not_reported_as_that_kind(kind: str, value: str) -> None:
    kinds = {f.kind for f in pii.detect(f"ref {value} end")}
    assert kind not in kinds


@pytest.mark.parametrize(
    "text",
    [
        "The meeting is at 12:30:45 on 2024-05-01, room 12, order 12345678.",
        "Use numpy 1.26 and python 3.11; see section 4.2.1.",
        "A cat sits on a mat. Class::method is called twice.",
        "I have 3 red circles and 2 squares",
        "Due 2026-11-29 at 12:30, or on 29.11.2026 12:30 or 05.11.2026 09:15.",
        "It costs 1,299.00 (was 1299.00 EUR); upgrade to 2.55.1 or v0.12.3.",
        "Short numbers: 7, 42, 0171, 123 4567, room 0800, zip 01069 Dresden.",
        "The hotel 1234567890 is a booking reference, as is order 0000123456.",
        "Ratio 16:9, coordinates 48.8566, 2.3522, pi 3.14159265358979.",
    ],
)
def test_ordinary_text_has_no_findings(text: str) -> None:
    assert pii.detect(text) == []


def test_checksum_helpers_directly() -> None:
    assert pii.luhn_valid("79927398713")
    assert not pii.luhn_valid("79927398710")
    assert not pii.luhn_valid("")
    assert pii.cn_id_valid("11010519491231002X")
    assert not pii.cn_id_valid("11010519491231002")
    assert pii.iban_valid("GB82WEST12345698765432")
    assert not pii.iban_valid("GB82WEST1234569876543")


def test_redaction_replaces_every_value_and_counts_kinds() -> None:
    text = (
        "Mail jane.doe@example.com or call +44 20 7946 0958; card 4111 1111 1111 1111, "
        "IBAN DE89 3704 0044 0532 0130 00, id 11010519491231002X, host 10.1.2.3 / 2001:db8::7."
    )
    out, counts = pii.redact(text)
    for raw in [
        "jane.doe@example.com",
        "7946 0958",
        "4111 1111 1111 1111",
        "0532 0130",
        "11010519491231002X",
        "10.1.2.3",
        "2001:db8::7",
    ]:
        assert raw not in out
    assert dict(counts) == {
        "email": 1,
        "phone": 1,
        "card": 1,
        "iban": 1,
        "cn_id": 1,
        "ipv4": 1,
        "ipv6": 1,
    }
    assert "[EMAIL]" in out and "[CARD]" in out and out.startswith("Mail [EMAIL] or call")
    assert pii.detect(out) == []


def test_card_followed_by_other_number_is_still_found() -> None:
    out, counts = pii.redact("card 4111 1111 1111 1111 22 times")
    assert out == "card [CARD] 22 times"
    assert counts["card"] == 1


def test_iban_followed_by_upper_case_word() -> None:
    out, _ = pii.redact("IBAN DE89 3704 0044 0532 0130 00 BANK")
    assert out == "IBAN [IBAN] BANK"


def _with_luhn(prefix_digits: str) -> str:
    for check in "0123456789":
        if pii.luhn_valid(prefix_digits + check):
            return prefix_digits + check
    raise AssertionError("unreachable")


@settings(max_examples=60, deadline=None)
@given(
    body=st.text(alphabet="0123456789", min_size=14, max_size=14),
    left=st.text(alphabet="abcdefgh ,.", max_size=20),
    right=st.text(alphabet="abcdefgh ,.", max_size=20),
    sep=st.sampled_from(["", " ", "-"]),
)
def test_any_luhn_valid_card_is_redacted(body: str, left: str, right: str, sep: str) -> None:
    card = _with_luhn("4" + body)
    shown = sep.join(card[i : i + 4] for i in range(0, 16, 4))
    out, counts = pii.redact(f"{left} {shown} {right}")
    assert card not in out.replace(" ", "").replace("-", "")
    assert counts["card"] == 1
    # one digit off breaks the check: not a card any more
    wrong = card[:-1] + str((int(card[-1]) + 1) % 10)
    assert "card" not in {f.kind for f in pii.detect(f"{left} {wrong} {right}")}


@settings(max_examples=60, deadline=None)
@given(
    user=st.from_regex(r"[a-z][a-z0-9._]{0,10}[a-z0-9]", fullmatch=True),
    host=st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True),
    tld=st.sampled_from(["com", "org", "de", "cn", "io"]),
    words=st.lists(st.sampled_from(["hi", "please", "contact", "x", "1"]), max_size=5),
)
def test_any_email_is_redacted(user: str, host: str, tld: str, words: list[str]) -> None:
    email = f"{user}@{host}.{tld}"
    out, _ = pii.redact(" ".join([*words, email, *words]))
    assert email not in out
    assert "@" not in out


@pytest.mark.parametrize(
    "text,expected",
    [
        ("phone: 5551234567", "phone: [PHONE]"),
        ("call 02079460958 today", "call [PHONE] today"),
        ("Tel. 030/12345678", "Tel. [PHONE]"),
        ("Mobile (after 6pm): 555 123 45678", "Mobile (after 6pm): [PHONE]"),
        ("Telefonnummer: 4930 1234 5678", "Telefonnummer: [PHONE]"),
        ("fax 4930-1234-5678", "fax [PHONE]"),
        ("电话：5551234567", "电话：[PHONE]"),
        ("手机号码 13812345678", "手机号码 [PHONE]"),
        # no phone word within the window: a bare run is not a phone number
        ("order 5551234567", "order 5551234567"),
        ("call me about it tomorrow, the order is 5551234567", None),
    ],
)
def test_bare_digit_run_after_a_phone_word(text: str, expected: str | None) -> None:
    out, _ = pii.redact(text)
    assert out == (text if expected is None else expected)


@pytest.mark.parametrize(
    "text,expected",
    [
        # non-breaking, narrow and ideographic spaces; en dashes
        ("card 4111\u00a01111\u00a01111\u00a01111 ok", "card [CARD] ok"),
        ("card 4111\u202f1111\u20091111\u30001111 ok", "card [CARD] ok"),
        ("card 4111\u20131111\u20131111\u20131111 ok", "card [CARD] ok"),
        # full-width digits, @ and dots, ideographic full stop
        ("卡号：４１１１ １１１１ １１１１ １１１１。", "卡号：[CARD]。"),
        ("mail user＠example.com now", "mail [EMAIL] now"),
        ("mail ｕｓｅｒ＠ｅｘａｍｐｌｅ．ｃｏｍ now", "mail [EMAIL] now"),
        ("host 192。168。1。1 down", "host [IPV4] down"),
        ("手机 １３８１２３４５６７８", "手机 [PHONE]"),
        ("IBAN ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００", "IBAN [IBAN]"),
        # invisible characters inside a value
        ("mail jane\u200b@example.com now", "mail [EMAIL] now"),
        ("id 1101051949\u200d1231002X", "id [CN_ID]"),
        # Arabic-Indic digits
        ("call +٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨", "call [PHONE]"),
        # text around a finding is kept as written, even when folding changes lengths
        ("ﬁle\u200b ４１１１ １１１１ １１１１ １１１１ ①", "ﬁle\u200b [CARD] ①"),
    ],
)
def test_unicode_forms_are_normalised_and_the_original_span_redacted(
    text: str, expected: str
) -> None:
    out, counts = pii.redact(text)
    assert out == expected
    assert sum(counts.values()) == 1
    assert pii.detect(out) == []


@pytest.mark.parametrize(
    "text,expected",
    [
        ("host ::ffff:192.0.2.128 up", "host [IPV6] up"),
        ("IBAN DE89-3704-0044-0532-0130-00.", "IBAN [IBAN]."),
        ("IBAN DE89  3704  0044  0532  0130  00 BANK", "IBAN [IBAN] BANK"),
        ("mail jane_o'neil@example.org, or 'bob@example.com'", "mail [EMAIL], or '[EMAIL]'"),
        ("host 192.168.001.001:8080", "host [IPV4]:8080"),
        ("call +44 20 7946 0958 2024 times", "call [PHONE] 2024 times"),
        ("(555-123-4567)", "([PHONE])"),
        ("(030 1234567)", "([PHONE])"),
    ],
)
def test_no_partial_redaction(text: str, expected: str) -> None:
    out, _ = pii.redact(text)
    assert out == expected
