"""The verification service against real DNS and SMTP servers on loopback (no Kafka needed)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from streams.settings import Settings
from streams.stages.verify import build_verifier
from streams.verify.service import Verifier
from tests.peers.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def verifier(world: World) -> AsyncIterator[Verifier]:
    settings = Settings(
        dns_nameservers=world.dns.nameserver,
        dns_timeout=0.5,
        dns_tries=1,
        smtp_probe_port=world.smtp_port,
        smtp_probe_timeout=1.5,
    )
    v = build_verifier(settings.verify, None)
    yield v
    assert v.prober is not None
    await v.prober.close()


def task(address: str, probe: bool = True, operation: str = "verify") -> dict[str, Any]:
    return {
        "request_id": "r1",
        "tenant": "acme",
        "address": address,
        "operation": operation,
        "smtp_probe": probe,
        "priority": "normal",
        "requested_at": datetime.now(UTC),
    }


async def check(v: Verifier, address: str, probe: bool = True) -> dict[str, Any]:
    return await v.verify(task(address, probe), datetime.now(UTC))


@pytest.mark.parametrize(
    ("address", "reachable", "reason"),
    [
        ("alice@normal.example", "safe", None),
        ("nobody@normal.example", "invalid", "mailbox_unknown"),
        ("anyone@catchall.example", "risky", "catch_all"),
        ("zoe@grey.example", "unknown", "smtp_temporary_failure"),
        ("x@nullmx.example", "invalid", "null_mx"),
        ("carol@amx.example", "safe", None),
        ("x@nomail.example", "invalid", "no_mail_server"),
        ("x@doesnotexist.example", "invalid", "no_such_domain"),
        ("full@full.example", "risky", "mailbox_full"),
        ("alice@bücher.example", "safe", None),
        ("alice@backup.example", "safe", None),
        ("not an address", "invalid", "invalid_syntax"),
        ("x@mailinator.com", "risky", "disposable"),
        ("info@normal.example", "risky", "role_account"),
        ("joe@gmial.com", "risky", "possible_typo"),
    ],
)
async def test_verdicts(
    verifier: Verifier, address: str, reachable: str, reason: str | None
) -> None:
    result = await check(verifier, address)
    assert result["is_reachable"] == reachable, result
    if reason is not None:
        assert reason in result["reasons"]
    else:
        assert result["reasons"] == []


async def test_sections_look_like_reacher(verifier: Verifier) -> None:
    r = await check(verifier, "alice@bücher.example")
    assert r["normalized"] == "alice@bücher.example"
    assert r["syntax"]["ascii_domain"] == "xn--bcher-kva.example"
    assert r["mx"]["records"] == ["mx.normal.mx.example"]
    assert r["smtp"]["can_connect_smtp"] is True
    assert r["smtp"]["is_deliverable"] is True
    assert r["smtp"]["is_catch_all"] is False
    assert r["smtp"]["reply"]["code"] == 250
    assert r["score"] > 90
    typo = await check(verifier, "joe@gmial.com")
    assert typo["syntax"]["suggestion"] == "joe@gmail.com"
    nullmx = await check(verifier, "x@nullmx.example")
    assert nullmx["mx"]["null_mx"] is True
    assert nullmx["mx"]["accepts_mail"] is False
    implicit = await check(verifier, "carol@amx.example")
    assert implicit["mx"]["implicit_mx"] is True
    full = await check(verifier, "full@full.example")
    assert full["smtp"]["has_full_inbox"] is True


async def test_unicode_local_part_validates_without_probe(verifier: Verifier) -> None:
    r = await check(verifier, "ünïcode@bücher.example", probe=False)
    assert r["is_reachable"] == "safe"
    assert r["smtp"] is None
    assert r["score"] < 99  # no probe: less sure than a 250


async def test_stalled_mx_is_unknown_within_the_timeout(verifier: Verifier, world: World) -> None:
    began = time.monotonic()
    r = await check(verifier, "x@stall.example")
    assert time.monotonic() - began < 6
    assert r["is_reachable"] == "unknown"
    assert "smtp_unreachable" in r["reasons"]
    assert r["smtp"]["can_connect_smtp"] is False
    assert world.stall is not None
    assert world.stall.connections >= 1


async def test_dns_timeout_is_unknown_and_not_cached(verifier: Verifier) -> None:
    r = await check(verifier, "x@slowdns.example")
    assert r["is_reachable"] == "unknown"
    assert "dns_unavailable" in r["reasons"]
    assert "slowdns.example" not in verifier.mx_cache


async def test_one_connection_serves_several_recipients(verifier: Verifier, world: World) -> None:
    server = world.mx["catchall"]
    before = server.count("ehlo")
    for name in ("a", "b", "c", "d", "e"):
        await check(verifier, f"{name}@catchall.example")
    assert server.count("ehlo") - before == 1
    # the catch-all check ran once for the domain, not once per recipient
    assert server.count("data") == 0


async def test_mx_answers_and_verdicts_are_cached(verifier: Verifier, world: World) -> None:
    first = await check(verifier, "bob@normal.example")
    queries = world.dns.queries("normal.example", "MX")
    again = await check(verifier, "bob@normal.example")
    assert first["cached"] is False
    assert again["cached"] is True
    assert again["verified_at"] == first["verified_at"]
    other = await check(verifier, "alice@normal.example")
    assert other["cached"] is False
    assert world.dns.queries("normal.example", "MX") == queries  # MX came from the cache


async def test_probes_never_send_data(world: World, verifier: Verifier) -> None:
    # the delivery tests share these servers and do send DATA: compare before and after
    before = {name: server.count("data") for name, server in world.mx.items()}
    rcpts = world.mx["normal"].count("rcpt")
    for address in ("alice@normal.example", "anyone@catchall.example", "full@full.example"):
        await check(verifier, address)
    assert world.mx["normal"].count("rcpt") > rcpts  # the probe did reach the server
    assert {name: server.count("data") for name, server in world.mx.items()} == before


async def test_concurrent_checks_of_one_address_share_one_probe(
    verifier: Verifier, world: World
) -> None:
    import asyncio

    server = world.mx["amx"]
    before = server.count("rcpt")
    results = await asyncio.gather(*(check(verifier, "carol@amx.example") for _ in range(5)))
    assert sorted(r["cached"] for r in results) == [False, True, True, True, True]
    assert {r["is_reachable"] for r in results} == {"safe"}
    assert server.count("rcpt") - before <= 2  # the address, plus at most one catch-all check
