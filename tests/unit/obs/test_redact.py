"""Addresses out of log text: the pure redaction function, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.obs.redact import Redactor

R = Redactor(b"test key")


def hashed(address: str) -> str:
    domain = address.rsplit("@", 1)[1].lower()
    return f"addr:{R.digest(address)}@{domain}"


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("sent to bob@example.com", ["bob@example.com"]),
        ("<Bob.Smith+tag@Mail.Example.CO.UK>", ["Bob.Smith+tag@Mail.Example.CO.UK"]),
        ("mailto:alice@example.org;", ["alice@example.org"]),
        ("to=alice@example.org, from=carol@x.io", ["alice@example.org", "carol@x.io"]),
        ('"john smith"@example.com', ['"john smith"@example.com']),
        ("jürgen@bücher.de", ["jürgen@bücher.de"]),
        ("a" * 80 + "@long.example", ["a" * 80 + "@long.example"]),
    ],
)
def test_every_address_becomes_its_keyed_hash_with_the_domain_kept(
    text: str, addresses: list[str]
) -> None:
    out = R.text(text)
    for address in addresses:
        local = address.rsplit("@", 1)[0]
        assert local not in out
        assert hashed(address) in out


def test_hash_ignores_case_and_depends_on_the_key() -> None:
    assert R.text("Bob@Example.COM") == R.text("bob@example.com")
    assert R.text("bob@example.com") != Redactor(b"another key").text("bob@example.com")
    assert R.text("bob@example.com") != R.text("bob@example.net")
    assert len(R.digest("bob@example.com")) == 12


@pytest.mark.parametrize(
    "text",
    [
        "no address here",
        "postgresql://postgres@127.0.0.1:5432/postwire",  # a URL's user is not a mailbox
        "user@localhost",  # no dot in the domain: not a mail address
        "@example.com",
        "a @ b.com",
    ],
)
def test_text_without_an_address_is_unchanged(text: str) -> None:
    assert R.text(text) == text


def test_a_password_in_a_url_is_hidden_too() -> None:
    out = R.text("relay smtp://user:hunter2@relay.example:25")
    assert "hunter2" not in out
    assert "@relay.example:25" in out


def test_redacting_twice_changes_nothing() -> None:
    once = R.text("to bob@example.com and <carol@x.io>")
    assert R.text(once) == once


def test_values_nested_anywhere_are_redacted_keys_too() -> None:
    exc = ValueError("refused dave@example.com")
    event = {
        "event": "bounce for bob@example.com",
        "n": 3,
        "ok": True,
        "none": None,
        "ratio": 0.5,
        "rcpts": ["carol@x.io", ("erin@y.io",)],
        "by_rcpt": {"frank@z.io": {"code": 550}},
        "exc": exc,
        "raw": b"MAIL FROM:<gina@w.io>",
    }
    out = R.value(event)
    text = repr(out)
    for local in ("bob", "carol", "erin", "frank", "dave", "gina"):
        assert f"{local}@" not in text
    assert out["n"] == 3
    assert out["ok"] is True
    assert out["none"] is None
    assert out["ratio"] == 0.5
    assert out["by_rcpt"] == {hashed("frank@z.io"): {"code": 550}}
    assert out["rcpts"] == [hashed("carol@x.io"), [hashed("erin@y.io")]]
    assert event["event"] == "bounce for bob@example.com"  # the input is not modified


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        Redactor(b"")


KEY = "pw_" + "Ab0_-" * 8 + "xyz"  # the shape create_api_key makes: pw_ + 43 URL-safe chars


def test_api_keys_are_scrubbed_from_log_text() -> None:
    from streams.obs.redact import scrub_keys

    assert len(KEY) == 46
    line = f"Authorization: Bearer {KEY}, then key={KEY[:30]}."
    out = R.text(line)
    assert "Ab0_-" not in out
    assert out == "Authorization: Bearer pw_[redacted], then key=pw_[redacted]."
    assert scrub_keys("pw_short and pw_") == "pw_short and pw_"  # too short to be a key
    assert R.value({"key": KEY, "n": [KEY]}) == {"key": "pw_[redacted]", "n": ["pw_[redacted]"]}


def test_api_keys_are_overwritten_in_bytes_keeping_their_length() -> None:
    from streams.contract.codec import default_codec
    from streams.obs.redact import API_KEY, scrub_key_bytes

    codec = default_codec()
    record = {
        "request_id": "r1",
        "tenant": "acme",
        "operation": "send",
        "content": {"subject": f"my key is {KEY}", "text": KEY},
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    raw = codec.encode("EmailRequest", record)
    scrubbed = scrub_key_bytes(raw)
    assert len(scrubbed) == len(raw)
    assert KEY.encode() not in scrubbed
    assert API_KEY.search(scrubbed.decode("latin-1")) is None  # nothing key-shaped is left
    # Avro strings are length-prefixed: the record still decodes, the key replaced
    decoded = codec.decode_as(scrubbed, "EmailRequest")
    assert decoded["content"]["subject"] == "my key is pw_" + "*" * 43
    assert scrub_key_bytes(b"no key here") == b"no key here"
