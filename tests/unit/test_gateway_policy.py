"""Classification and per-mode decisions, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from mmo_serving.config import HybridArgs, IsolationArgs
from mmo_serving.gateway.headers import HeaderError, parse_headers
from mmo_serving.gateway.policy import Classification, classify, decide
from mmo_serving.gateway.request import map_texts, payload_hmac, scan

PNG = "data:image/png;base64,iVBORw0KGgo="
ENDPOINT = "https://cloud.example.com/v1"


def classify_h(headers: dict[str, str], scanned: Any, args: IsolationArgs) -> Classification:
    """classify() with the declared class read from the headers, as the gateway does."""
    return classify(parse_headers(headers).data_class, scanned, args)


def chat(text: str, image: str | None = None) -> dict[str, Any]:
    content: Any = text
    if image is not None:
        content = [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image}},
        ]
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


def iso(mode: str, **hybrid: Any) -> IsolationArgs:
    if mode != "hybrid":
        return IsolationArgs(mode=mode)  # type: ignore[arg-type]
    opts: dict[str, Any] = {"endpoint": ENDPOINT, "queue_threshold": 4, **hybrid}
    return IsolationArgs(mode="hybrid", hybrid=HybridArgs(**opts))


# --- request scanning ------------------------------------------------------------------


def test_scan_finds_texts_and_images_but_not_keywords() -> None:
    body = chat("hello", PNG)
    body["messages"].insert(0, {"role": "system", "content": "be brief"})
    s = scan(body)
    assert s.texts == ["be brief", "hello"]
    assert (s.inline_images, s.remote_images) == (1, 0)
    remote = scan(chat("x", "https://img.example.com/a.png"))
    assert (remote.inline_images, remote.remote_images) == (0, 1)
    assert (
        scan(
            {"model": "m", "input": ["a", {"type": "image_url", "image_url": {"url": "s3://b/k"}}]}
        ).remote_images
        == 1
    )


def test_map_texts_leaves_images_and_keywords_alone() -> None:
    body = chat("hello", PNG)
    out = map_texts(body, str.upper)
    assert out["messages"][0]["content"][0]["text"] == "HELLO"
    assert out["messages"][0]["content"][1]["image_url"]["url"] == PNG
    assert out["model"] == "m" and out["messages"][0]["role"] == "user"
    assert body["messages"][0]["content"][0]["text"] == "hello"  # original untouched


def test_scan_collects_keys_keywords_and_remote_urls_for_the_pii_check() -> None:
    body = chat("hi", "https://img.example.com/a.png?for=carol@example.com")
    body["model"] = "bob@example.com"
    body["metadata"] = {"type": "4111 1111 1111 1111", "alice@example.com": "x"}
    s = scan(body)
    assert s.texts == ["hi", "x"]  # user text only: keys and keywords are never rewritten
    assert "bob@example.com" in s.other and "alice@example.com" in s.other
    assert "4111 1111 1111 1111" in s.other and "messages" in s.other
    assert "https://img.example.com/a.png?for=carol@example.com" in s.other
    c = classify_h({"X-Data-Class": "public"}, s, IsolationArgs(images_sensitive=False))
    assert c.data_class == "sensitive" and c.pii == {"email": 3, "card": 1}


def test_text_that_starts_with_data_colon_is_text_not_an_image() -> None:
    s = scan(chat("data: call me on 415-555-2671"))
    assert s.texts == ["data: call me on 415-555-2671"] and s.inline_images == 0
    assert scan({"input": ["data:image/png;base64,iVBO"]}).inline_images == 1
    c = classify_h({"X-Data-Class": "public"}, s, IsolationArgs(images_sensitive=False))
    assert c.data_class == "sensitive" and c.pii == {"phone": 1}


def test_payload_hash_is_stable_across_key_order() -> None:
    k = b"k"
    assert payload_hmac({"a": 1, "b": [1, 2]}, k) == payload_hmac({"b": [1, 2], "a": 1}, k)
    assert payload_hmac({"a": 1}, k) != payload_hmac({"a": 2}, k)
    assert payload_hmac({"a": 1}, k) != payload_hmac({"a": 1}, b"other")
    assert len(payload_hmac({"a": "\ud800"}, k)) == 64  # a lone surrogate is no error


# --- classification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers,body,args,declared,final",
    [
        ({}, chat("hi"), IsolationArgs(), "internal", "internal"),
        ({}, chat("hi"), IsolationArgs(default_data_class="public"), "public", "public"),
        ({"X-Data-Class": "public"}, chat("hi"), IsolationArgs(), "public", "public"),
        ({"x-data-class": "SENSITIVE"}, chat("hi"), IsolationArgs(), "sensitive", "sensitive"),
        (
            {"X-Data-Class": "public"},
            chat("mail a@b.example.com"),
            IsolationArgs(),
            "public",
            "sensitive",
        ),
        ({"X-Data-Class": "public"}, chat("hi", PNG), IsolationArgs(), "sensitive", "sensitive"),
        (
            {"X-Data-Class": "public"},
            chat("hi", PNG),
            IsolationArgs(images_sensitive=False),
            "public",
            "public",
        ),
    ],
)
def test_classify(
    headers: dict[str, str], body: Any, args: IsolationArgs, declared: str, final: str
) -> None:
    c = classify_h(headers, scan(body), args)
    assert (c.declared, c.data_class) == (declared, final)


def test_unknown_class_names_header_and_allowed_values() -> None:
    with pytest.raises(HeaderError) as err:
        classify_h({"X-Data-Class": "secret"}, scan(chat("x")), IsolationArgs())
    assert "X-Data-Class" in err.value.message
    assert "public, internal, sensitive" in err.value.message
    assert "secret" not in err.value.message  # header values are not echoed


def test_parse_route() -> None:
    assert parse_headers({}).route == "auto"
    assert parse_headers({"X-Route": "Cloud"}).route == "cloud"
    with pytest.raises(HeaderError, match=r"X-Route.*auto, local, cloud"):
        parse_headers({"X-Route": "moon"})


# --- decisions ----------------------------------------------------------------------------

PII = "my card is 4111 1111 1111 1111"
URL = "https://x.example/a.png"
RAW: dict[str, Any] = {"redact_pii": False}

# (mode/options, X-Data-Class, text, image, route, queue) -> (action, sent class, redact, status)
CASES: list[tuple[Any, ...]] = [
    # private / federated: always local, cloud route refused, remote image refused
    ("private", {}, "public", "hi", None, "auto", 100, "local", "public", False, 200),
    ("private", {}, "public", "hi", None, "cloud", 0, "refuse", "public", False, 403),
    ("private", {}, "public", "hi", URL, "auto", 0, "refuse", "sensitive", False, 403),
    ("federated", {}, "public", "hi", None, "auto", 100, "local", "public", False, 200),
    ("federated", {}, "public", "hi", None, "cloud", 0, "refuse", "public", False, 403),
    # hybrid, public listed (default offloadDataClasses = [public])
    ("hybrid", {}, "public", "hi", None, "auto", 0, "local", "public", False, 200),
    ("hybrid", {}, "public", "hi", None, "auto", 4, "local", "public", False, 200),
    ("hybrid", {}, "public", "hi", None, "auto", 5, "offload", "public", True, 200),
    ("hybrid", {}, "public", "hi", None, "cloud", 0, "offload", "public", True, 200),
    ("hybrid", {}, "public", "hi", None, "local", 100, "local", "public", False, 200),
    ("hybrid", RAW, "public", "hi", None, "cloud", 0, "offload", "public", False, 200),
    # not listed / sensitive: never leaves
    ("hybrid", {}, "internal", "hi", None, "cloud", 100, "local", "internal", False, 200),
    ("hybrid", {}, "sensitive", "hi", None, "cloud", 100, "local", "sensitive", False, 200),
    (
        "hybrid", {"offload_data_classes": ["public", "internal", "sensitive"]},
        "sensitive", "hi", None, "cloud", 100, "local", "sensitive", False, 200,
    ),
    (
        "hybrid", {"offload_data_classes": ["public", "internal"]},
        "internal", "hi", None, "cloud", 0, "offload", "internal", True, 200,
    ),
    # PII: redacted offload only with redactPII, else local
    ("hybrid", {}, "public", PII, None, "cloud", 0, "offload", "public", True, 200),
    ("hybrid", RAW, "public", PII, None, "cloud", 0, "local", "sensitive", False, 200),
    ("hybrid", {}, "internal", PII, None, "cloud", 0, "local", "sensitive", False, 200),
    # images: sensitive by default, so local; a remote URL served locally is refused
    ("hybrid", {}, "public", "hi", PNG, "cloud", 0, "local", "sensitive", False, 200),
    ("hybrid", {}, "public", "hi", URL, "cloud", 0, "refuse", "sensitive", False, 403),
    (
        "hybrid", {"_images_sensitive": False},
        "public", "hi", PNG, "cloud", 0, "offload", "public", True, 200,
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    "mode,opts,declared,text,image,route,queue,action,sent,redact,status", CASES
)
def test_decide_table(
    mode: str,
    opts: dict[str, Any],
    declared: str,
    text: str,
    image: str | None,
    route: str,
    queue: int,
    action: str,
    sent: str,
    redact: bool,
    status: int,
) -> None:
    opts = dict(opts)
    images_sensitive = opts.pop("_images_sensitive", True)
    args = iso(mode, **opts)
    args.images_sensitive = images_sensitive
    cls = classify_h({"X-Data-Class": declared}, scan(chat(text, image)), args)
    d = decide(args, cls, route, queue)  # type: ignore[arg-type]
    assert (d.action, d.data_class, d.redact, d.status) == (action, sent, redact, status), d
    assert d.destination == {"local": "local", "offload": ENDPOINT, "refuse": "none"}[action]
    assert d.reason


def test_refusal_reasons_say_why() -> None:
    args = iso("private")
    cls = classify_h({}, scan(chat("x", "https://x.example/a.png")), args)
    d = decide(args, cls, "auto")
    assert d.code == "remote_image_refused"
    assert "data:image/" in d.reason and "remote image URLs are not fetched" in d.reason
    d = decide(args, classify_h({}, scan(chat("x")), args), "cloud")
    assert "mode private has no cloud endpoint" in d.reason


def test_hybrid_without_hybrid_block_fails_closed() -> None:
    args = IsolationArgs(mode="hybrid")
    d = decide(args, classify_h({"X-Data-Class": "public"}, scan(chat("x")), args), "cloud")
    assert d.action == "local"


# --- images hidden in text, data: URL metadata ----------------------------------------

PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
    "rkJggg=="
)


@pytest.mark.parametrize(
    "text",
    [
        f" data:image/png;base64,{PNG_B64}",  # leading space
        f"what is in data:image/png;base64,{PNG_B64} this picture?",  # mid-sentence
        f"what is in this picture? {PNG_B64}",  # raw base64 image bytes
        "jpeg /9j/4AAQSkZJRgABAQEASABIAAD/2wBDAAMCAgICAgMCAgIDAwMDBAYEBAQEBAgGBgUGBwkIBwcH",
    ],
)
def test_an_image_anywhere_in_a_text_part_counts_as_an_image(text: str) -> None:
    s = scan(chat(text))
    assert s.inline_images == 1
    c = classify_h({"X-Data-Class": "public"}, s, IsolationArgs())
    assert (c.declared, c.data_class, c.source) == ("sensitive", "sensitive", "image")
    d = decide(iso("hybrid"), c, "cloud")
    assert d.action == "local" and "sensitive data never leaves" in d.reason


def test_ordinary_text_is_not_taken_for_an_image() -> None:
    for text in ["data: 3 rows", "see https://example.com/data:x", "base64 is an encoding"]:
        assert scan(chat(text)).inline_images == 0, text


def test_data_url_metadata_is_scanned_when_images_are_not_sensitive() -> None:
    url = f"data:image/png;name=passport-olivia.martin@example.org.png;base64,{PNG_B64}"
    s = scan(chat("describe it", url))
    assert s.inline_images == 1
    c = classify_h({"X-Data-Class": "public"}, s, IsolationArgs(images_sensitive=False))
    assert c.declared == "public" and c.data_class == "sensitive" and c.pii == {"email": 1}
    # a text that embeds such a URL: its metadata too
    s = scan(chat(f"look: {url}"))
    assert "email" in classify_h({}, s, IsolationArgs(images_sensitive=False)).pii
    # the pixels themselves are not scanned: no PII in a plain image
    plain = scan(chat("describe it", f"data:image/png;base64,{PNG_B64}"))
    assert classify_h({}, plain, IsolationArgs(images_sensitive=False)).pii == {}


def test_data_text_is_text_not_an_image() -> None:
    import base64

    hidden = base64.b64encode(b"call me at olivia.martin@example.org").decode()
    for url in [f"data:text/plain;base64,{hidden}", "data:text/plain,olivia.martin@example.org"]:
        slot = scan(chat("read this", url))  # in an image slot
        assert slot.inline_images == 0, url
        c = classify_h({"X-Data-Class": "public"}, slot, IsolationArgs(images_sensitive=False))
        assert c.data_class == "sensitive" and c.pii == {"email": 1}, url
        bare = scan({"model": "m", "input": [url]})  # a whole string, not in an image slot
        assert bare.inline_images == 0 and bare.texts == [url]
        assert classify_h({}, bare, IsolationArgs()).pii == {"email": 1}


@pytest.mark.parametrize(
    "url",
    ["data:text/plain;base64,QUJDR", "data:text/plain;base64,Q", "data:text/plain;base64,",
     "data:text/plain;base64", "data:text/plain;base64,QUJD-_", "data:text/plain;base64,%%%"],
)  # fmt: skip
def test_malformed_base64_text_urls_are_scanned_without_error(url: str) -> None:
    s = scan(chat("read this", url))
    assert s.inline_images == 0 and url in s.texts
