"""A signed message verified by dkimpy, which fetches the public key over real DNS (UDP) from the
loopback zone server: the TXT record, split into 255-byte character-strings, must reassemble into
the key. No Kafka needed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import dkim
import dns.resolver
import pytest

from streams.bench.dns_server import Zone, ZoneServer
from streams.deliver.dkim import DkimKey, Signer, keygen
from streams.deliver.mime import prepare

pytestmark = pytest.mark.integration

DOMAIN = "signed.example"


@pytest.fixture
def zone_server() -> Iterator[ZoneServer]:
    server = ZoneServer(Zone(), host="127.0.0.53", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(("algorithm", "selector"), [("rsa", "r2048"), ("ed25519", "ed")])
def test_dkimpy_verifies_with_the_key_from_dns(
    zone_server: ZoneServer, algorithm: str, selector: str
) -> None:
    pem, record = keygen(algorithm)  # type: ignore[arg-type]
    record_name = f"{selector}._domainkey.{DOMAIN}"
    zone_server.zone.txt[record_name] = record
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [zone_server.host]
    resolver.port = zone_server.port
    strings: list[tuple[bytes, ...]] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        for rdata in answer:
            strings.append(tuple(rdata.strings))
        return b"".join(b"".join(rdata.strings) for rdata in answer)

    task = {
        "from": {"email": f"news@{DOMAIN}", "name": "Signed Shop"},
        "content": {"subject": "Grüße", "text": "Hello\r\n", "html": "<p>Hello</p>"},
        "created_at": datetime(2024, 5, 6, tzinfo=UTC),
    }
    prepared = prepare(task)
    key = DkimKey.from_pem(prepared.sender_domain, selector, pem)
    message = prepared.render({"email": "ann@example.com", "name": "Ann"}, "m1")
    signer = Signer(lambda tenant, domain: key if tenant == "shop" else None)
    signed = signer.sign(message, "shop", prepared.sender_domain, datetime.now(UTC))

    assert dkim.verify(signed, dnsfunc=dnsfunc)
    assert zone_server.queries(record_name, "TXT") == 1
    (received,) = strings
    assert b"".join(received).decode() == record
    assert all(len(s) <= 255 for s in received)
    if algorithm == "rsa":
        assert len(received) > 1  # a 2048-bit key does not fit one character-string
    assert not dkim.verify(signed.replace(b"Hello\r\n", b"Hullo\r\n"), dnsfunc=dnsfunc)
    # From is over-signed: one put above ours, which a reader would show, fails verification
    assert not dkim.verify(b"From: Support <help@evil.example>\r\n" + signed, dnsfunc=dnsfunc)
