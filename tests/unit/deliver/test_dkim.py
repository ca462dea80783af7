"""DKIM signing, checked by an independent verifier (dkimpy) with the key served by a dnsfunc."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from functools import cache
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from streams.deliver import dkim as signing
from streams.deliver.dkim import (
    DkimKey,
    Signer,
    canonical_body,
    check_selector,
    key_type,
    keygen,
    parse_key_file_name,
)
from streams.deliver.keyring import KeyRing
from streams.deliver.mime import Prepared, prepare
from streams.errors import DkimKeyError, DkimMessageError

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
DOMAIN = "shop.example"
TENANT = "shop"
KEYS = {algorithm: keygen(algorithm) for algorithm in ("rsa", "ed25519")}


@cache
def prepared(text: str) -> Prepared:
    # one Prepared per body: a new one would pick new MIME boundaries, so a new body
    task = {
        "from": {"email": f"news@{DOMAIN}", "name": "Shop News"},
        "content": {
            "subject": "Weekly news",
            "text": text,
            "html": "<p>Hello</p>",
            "headers": {"List-Unsubscribe": "<mailto:u@shop.example>", "X-Campaign": "c1"},
        },
        "created_at": NOW,
    }
    return prepare(task)


def message(text: str = "Hello there,\r\nthe weekly news.  \r\n\r\n", **extra: Any) -> bytes:
    rcpt = {"email": "ann@example.com", "name": "Ann"} | extra
    return prepared(text).render(rcpt, "m1")


def signer(algorithm: str, **kw: Any) -> Signer:
    """A signer holding one key: the shop tenant's, of shop.example."""
    key = DkimKey.from_pem(DOMAIN, "s1", KEYS[algorithm][0])
    return Signer(
        lambda tenant, domain: key if (tenant, domain) == (TENANT, DOMAIN) else None, **kw
    )


def verify(signed: bytes, algorithm: str) -> bool:
    asked: list[bytes] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        asked.append(name)
        return KEYS[algorithm][1].encode()

    ok = bool(dkim.verify(signed, dnsfunc=dnsfunc))
    assert asked == [b"s1._domainkey.shop.example."]
    return ok


def tags(signed: bytes) -> dict[str, str]:
    header = signed.partition(b"\r\nFrom:")[0].decode()
    value = header.removeprefix("DKIM-Signature:").replace("\r\n", "")
    pairs = (tag.strip().partition("=") for tag in value.split(";"))
    return {k: "".join(v.split()) for k, _, v in pairs}


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signature_verifies_with_dkimpy(algorithm: str) -> None:
    signed = signer(algorithm).sign(message(), TENANT, DOMAIN, NOW)
    assert signed.endswith(message())
    assert verify(signed, algorithm)
    found = tags(signed)
    assert found["a"] == f"{algorithm}-sha256"
    assert (found["d"], found["s"], found["c"]) == (DOMAIN, "s1", "relaxed/relaxed")
    assert found["t"] == str(int(NOW.timestamp()))
    # every signed name once more than the message has it (over-signing)
    assert found["h"].split(":") == [
        "from", "from", "sender", "reply-to", "to", "to", "cc", "subject", "subject", "date",
        "date", "message-id", "message-id", "mime-version", "mime-version", "content-type",
        "content-type", "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe",
        "list-unsubscribe-post",
    ]  # fmt: skip
    head = signed.partition(b"\r\n\r\n")[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"the weekly news.", b"the weekly NEWS."),  # body
        (b"Subject: Weekly news", b"Subject: Weekly newz"),  # signed header
        (b"To: Ann <ann@", b"To: Bob <ann@"),
    ],
)
def test_tampering_breaks_the_signature(algorithm: str, old: bytes, new: bytes) -> None:
    signed = signer(algorithm).sign(message(), TENANT, DOMAIN, NOW)
    assert old in signed
    assert not verify(signed.replace(old, new), algorithm)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest.mark.parametrize(
    "added",
    [
        b"From: Support <help@evil.example>\r\n",  # a prepended From: what a reader shows
        b"Subject: Urgent: verify your account\r\n",
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        b"Cc: someone@evil.example\r\n",
        b"Sender: x@evil.example\r\n",
    ],
)
def test_an_added_signed_header_breaks_the_signature(algorithm: str, added: bytes) -> None:
    signed = signer(algorithm).sign(message(), TENANT, DOMAIN, NOW)
    assert verify(signed, algorithm)
    head, _, body = signed.partition(b"\r\n\r\n")
    assert not verify(added + signed, algorithm)
    assert not verify(head + b"\r\n" + added + b"\r\n" + body, algorithm)


def test_one_click_unsubscribe_is_signed() -> None:
    task = {
        "from": {"email": f"news@{DOMAIN}", "name": None},
        "content": {
            "subject": "Weekly news",
            "text": "Hello\n",
            "headers": {
                "List-Unsubscribe": "<https://shop.example/u/1>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        },
        "created_at": NOW,
    }
    raw = prepare(task).render({"email": "ann@example.com"}, "m1")
    signed = signer("rsa").sign(raw, TENANT, DOMAIN, NOW)
    names = tags(signed)["h"].split(":")
    assert names.count("list-unsubscribe-post") == 2  # the one present, and over-signed
    assert verify(signed, "rsa")
    changed = signed.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=One-Click ; x")
    assert not verify(changed, "rsa")


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_relaxed_canonicalisation_tolerates_relay_whitespace(algorithm: str) -> None:
    signed = signer(algorithm).sign(message(), TENANT, DOMAIN, NOW)
    relayed = signed.replace(b"Subject: Weekly news", b"Subject:  Weekly\r\n\tnews ")
    relayed = relayed.replace(b"Hello there,", b"Hello   there,") + b"\r\n\r\n"
    assert verify(relayed, algorithm)


def test_unsigned_headers_may_change() -> None:
    signed = signer("rsa").sign(message(), TENANT, DOMAIN, NOW)
    assert verify(signed.replace(b"X-Campaign: c1", b"X-Campaign: c2"), "rsa")


def test_unknown_domain_is_left_unsigned() -> None:
    assert signer("rsa").sign(message(), TENANT, "other.example", NOW) == message()


def test_another_tenants_key_never_signs() -> None:
    # the case: tenant B sends as shop.example, whose key is tenant shop's
    assert signer("rsa").sign(message(), "b", DOMAIN, NOW) == message()
    assert signer("rsa").sign(message(), TENANT, "Shop.Example", NOW) != message()


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_body_hash_cache_signs_like_no_cache(
    algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counting(body: bytes) -> bytes:
        calls.append(len(body))
        return canonical_body(body)

    monkeypatch.setattr(signing, "canonical_body", counting)
    cached, uncached = signer(algorithm), signer(algorithm, body_cache=0)
    for name in ("Ann", "Bob", "Cleo"):
        msg = message(name=name)
        assert cached.sign(msg, TENANT, DOMAIN, NOW) == uncached.sign(msg, TENANT, DOMAIN, NOW)
    assert len(calls) == 1 + 3  # the cached signer hashed the shared body once
    other = message(text="another body")
    assert cached.sign(other, TENANT, DOMAIN, NOW) == uncached.sign(other, TENANT, DOMAIN, NOW)
    assert verify(cached.sign(other, TENANT, DOMAIN, NOW), algorithm)


def test_canonical_body_follows_rfc_6376_example() -> None:
    assert canonical_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"
    assert canonical_body(b"") == b""
    assert canonical_body(b"\r\n\r\n") == b""
    assert canonical_body(b"last line  ") == b"last line\r\n"


@pytest.mark.parametrize(
    "bad",
    [
        b"From: a@shop.example\nSubject: x\n\nbody\n",  # LF only
        b"From: a@shop.example\r\nSubject: x\r\nbody\rmore\r\n",  # bare CR
        b"From: a@shop.example\r\nSubject: no body separator\r\n",
        b"Subject: no from\r\n\r\nbody\r\n",
        b" continuation first\r\nFrom: a@shop.example\r\n\r\nbody\r\n",
    ],
)
def test_malformed_messages_are_refused(bad: bytes) -> None:
    with pytest.raises(DkimMessageError):
        signer("ed25519").sign(bad, TENANT, DOMAIN, NOW)


def test_keygen_records() -> None:
    for algorithm, (pem, record) in KEYS.items():
        key = DkimKey.from_pem(DOMAIN, "s1", pem)
        assert record.startswith(f"v=DKIM1; k={algorithm}; p=")
        assert key.dns_record() == record
        assert key.record_name == "s1._domainkey.shop.example"
    with pytest.raises(DkimKeyError):
        keygen("rsa", bits=512)


def test_key_type_names_the_choices() -> None:
    assert key_type("ed25519") == "ed25519"
    with pytest.raises(DkimKeyError, match="use rsa or ed25519"):
        key_type("dsa")


def test_key_file_names_give_selector_and_domain() -> None:
    assert parse_key_file_name("s2024._domainkey.Mail.Shop.example.pem") == (
        "s2024",
        "mail.shop.example",
    )
    for name in ("shop.example.pem", "s1._domainkey.shop.example.txt", "._domainkey.x.pem"):
        with pytest.raises(DkimKeyError, match="not named"):
            parse_key_file_name(name)


def test_selectors_must_be_dns_names() -> None:
    assert check_selector("pw-2024_a") == "pw-2024_a"
    for bad in ("bad selector", "-pw", "pw.", "sélecteur", "x" * 64):
        with pytest.raises(DkimKeyError, match="selector"):
            check_selector(bad)


def ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"not a key", "not an unencrypted PEM"), (ec_pem(), "RSA or Ed25519")],
)
def test_unusable_keys_name_their_source(content: bytes, match: str) -> None:
    with pytest.raises(DkimKeyError, match=match) as raised:
        DkimKey.from_pem(DOMAIN, "s1", content, source="the key of shop")
    assert "the key of shop" in str(raised.value)


def test_key_ring_parses_a_key_once_and_follows_rotation() -> None:
    current: dict[tuple[str, str], tuple[str, bytes]] = {(TENANT, DOMAIN): ("s1", KEYS["rsa"][0])}
    asked: list[tuple[str, str]] = []

    def source(tenant: str, domain: str) -> tuple[str, bytes] | None:
        asked.append((tenant, domain))
        return current.get((tenant, domain))

    ring = KeyRing(source)
    first = ring(TENANT, DOMAIN)
    assert first is not None
    assert (first.selector, first.algorithm) == ("s1", "rsa-sha256")
    assert ring(TENANT, DOMAIN) is first  # parsed once
    assert ring("b", DOMAIN) is None  # keys are looked up per tenant
    current[(TENANT, DOMAIN)] = ("s2", KEYS["ed25519"][0])
    rotated = ring(TENANT, DOMAIN)
    assert rotated is not None
    assert (rotated.selector, rotated.algorithm) == ("s2", "ed25519-sha256")
    assert asked.count((TENANT, DOMAIN)) == 3
    current[(TENANT, DOMAIN)] = ("s3", b"garbage")
    with pytest.raises(DkimKeyError, match="tenant shop"):
        ring(TENANT, DOMAIN)


# --- signing off the event loop -----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_sign_async_signs_on_the_signer_threads_and_verifies(
    algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = signing._signature

    def recording(key: Any, data: bytes) -> str:
        threads.append(threading.current_thread().name)
        return real(key, data)

    monkeypatch.setattr(signing, "_signature", recording)
    async_signer, sync_signer = signer(algorithm, threads=2), signer(algorithm)
    try:
        names = [f"R{i}" for i in range(8)]
        signed = await asyncio.gather(
            *(async_signer.sign_async(message(name=n), TENANT, DOMAIN, NOW) for n in names)
        )
    finally:
        async_signer.close()
    assert len(threads) == 8
    assert all(name.startswith("dkim") for name in threads)  # never the loop's thread
    for name, one in zip(names, signed, strict=True):
        assert verify(one, algorithm)
        if algorithm == "ed25519":  # deterministic: the same bytes as the inline signer's
            assert one == sync_signer.sign(message(name=name), TENANT, DOMAIN, NOW)


async def test_body_hash_computed_once_for_many_recipients_of_one_body() -> None:
    rsa_signer = signer("rsa")
    try:
        for i in range(20):
            signed = await rsa_signer.sign_async(message(name=f"N{i}"), TENANT, DOMAIN, NOW)
            assert verify(signed, "rsa")
        assert rsa_signer.body_hashes_computed == 1
        await rsa_signer.sign_async(message(text="a new body"), TENANT, DOMAIN, NOW)
        assert rsa_signer.body_hashes_computed == 2
    finally:
        rsa_signer.close()


async def test_sign_async_without_threads_and_without_a_key() -> None:
    inline = signer("rsa", threads=0)
    signed = await inline.sign_async(message(), TENANT, DOMAIN, NOW)
    assert verify(signed, "rsa")
    assert await inline.sign_async(message(), "other", DOMAIN, NOW) == message()
    with pytest.raises(DkimMessageError):
        await inline.sign_async(b"no header block", TENANT, DOMAIN, NOW)


def test_body_cache_is_bounded_in_bytes() -> None:
    small = signer("ed25519", body_cache_bytes=3000)
    bodies = [bytes([65 + i]) * 1000 + b"\r\n" for i in range(4)]
    for body in bodies:
        small.body_hash(body)
    assert small.body_hashes_computed == 4
    small.body_hash(bodies[-1])  # the newest is still there
    assert small.body_hashes_computed == 4
    small.body_hash(bodies[0])  # the oldest went to make room
    assert small.body_hashes_computed == 5
    small.body_hash(b"x" * 4000)  # larger than the whole budget: hashed, never kept
    small.body_hash(b"x" * 4000)
    assert small.body_hashes_computed == 7
