"""Shaping inside ``Deliverer.attempt``, against loopback MX servers that answer like Yahoo,
Microsoft and Gmail (real SMTP and DNS, no Kafka): a rule that fires suspends the site or cuts
its rate, a suspended site's tasks are put back without reaching the server, expiry restores it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.bench.dns_server import Zone, ZoneServer
from streams.contract.records import DeliveryTask
from streams.deliver.dkim import Signer
from streams.deliver.keyring import KeyRing
from streams.deliver.retry import RetryPolicy
from streams.deliver.service import Deliverer, DeliveryRules
from streams.deliver.shaping import Shaping
from streams.deliver.shaping_file import rules_from
from streams.deliver.throttle import DestinationLimits, DestinationThrottle, Limit
from streams.deliver.transport import Transport, TransportConfig
from streams.gate.expand import expand
from streams.mail.dns import MxResolver
from tests.peers.providers import (
    GMAIL_RATE,
    MICROSOFT_BLOCK,
    MICROSOFT_BUSY,
    YAHOO_TSS04,
    ProviderServer,
)
from tests.peers.smtp_servers import free_port_on

# clear of tests/peers/world.py (127.0.0.1x) and test_transport.py (127.0.0.53-249)
PROVIDERS = {
    "yahoo": ("127.0.1.10", "mta5.am0.yahoodns.net"),
    "outlook": ("127.0.1.11", "shaping-test.mail.protection.outlook.com"),
    "gmail": ("127.0.1.12", "gmail-smtp-in.l.google.com"),
}
# the site of each provider's domain: its one MX host (streams/deliver/sites.py)
SITES = {f"{name}.example": mx_host for name, (_, mx_host) in PROVIDERS.items()}


class Clock:
    """The wall clock, moved forward at will: a suspension ends without waiting for it."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.ahead)


@pytest.fixture(scope="module")
def mx_port() -> int:
    return free_port_on(PROVIDERS["yahoo"][0])


@pytest.fixture(scope="module")
def zone() -> Iterator[ZoneServer]:
    zone = Zone()
    for name, (address, mx_host) in PROVIDERS.items():
        zone.mx[f"{name}.example"] = [(10, mx_host)]
        zone.a[mx_host] = address
    server = ZoneServer(zone, host="127.0.1.53", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def providers(mx_port: int) -> Iterator[dict[str, ProviderServer]]:
    started = {
        name: ProviderServer(address, mx_port, "250 OK", 0).start()
        for name, (address, _) in PROVIDERS.items()
    }
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture
async def make(zone: ZoneServer, mx_port: int) -> AsyncIterator[Any]:
    made: list[Deliverer] = []

    def build(clock: Clock, rate: float = 1000.0, burst: int = 100, **kw: Any) -> Deliverer:
        limits = DestinationLimits(Limit(connections=5, rate=rate, burst=burst), overrides={})
        throttle = DestinationThrottle(limits)
        config = TransportConfig(
            mode="mx",
            tls="none",
            connect_timeout=2.0,
            command_timeout=2.0,
            mx_port=mx_port,
            pace_max_wait=kw.get("throttle_max_wait", 5.0),
        )
        resolver = MxResolver([zone.nameserver], timeout=0.5, tries=1)
        deliverer = Deliverer(
            Transport(config, throttle, resolver, clock=lambda: clock().timestamp()),
            Signer(KeyRing(lambda _tenant, _domain: None)),
            throttle,
            DeliveryRules(RetryPolicy(1.0, 2.0, 4.0, 600.0, (1, 2, 4)), **kw),
            clock=clock,
            shaping=Shaping(rules_from(None)),
        )
        made.append(deliverer)
        return deliverer

    yield build
    for deliverer in made:
        await deliverer.close()


def task(address: str) -> DeliveryTask:
    request: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "tenant": "t1",
        "operation": "send",
        "priority": "bulk",
        "from": {"email": "news@acme.example", "name": None},
        "reply_to": None,
        "recipients": [{"email": address, "substitutions": {}, "custom_args": {}}],
        "content": {
            "subject": "Hi",
            "text": "Hello.\r\n",
            "html": None,
            "template_id": None,
            "headers": {},
            "attachments": [],
        },
        "substitutions": {},
        "categories": [],
        "custom_args": {},
        "send_at": None,
        "created_at": datetime.now(UTC),
    }
    [(_domain, _lane, made)] = expand(request, datetime.now(UTC), lambda *_: None).tasks  # type: ignore[arg-type]
    return made


async def test_yahoo_tss04_suspends_the_site_until_it_ends(
    make: Any, providers: dict[str, ProviderServer]
) -> None:
    yahoo = providers["yahoo"]
    yahoo.refuse(YAHOO_TSS04, 1)
    clock = Clock()
    deliverer = make(clock)
    first = await deliverer.attempt(task("one@yahoo.example"))
    assert first.event["type"] == "deferred"
    assert "TSS04" in (first.event["reason"] or "")
    state = deliverer.shaping.suspension(SITES["yahoo.example"], clock().timestamp())
    assert state is not None
    assert state.suspend_rule == "yahoo-tss04"
    assert state.suspended_until == pytest.approx(clock().timestamp() + 3600, abs=5)
    # its retry waits for the suspension, not only for the ladder's first step (1 s)
    assert first.retry is not None
    assert first.retry["not_before"] is not None
    assert first.retry["not_before"].timestamp() == pytest.approx(state.suspended_until)
    assert first.event["retry_after_ms"] == pytest.approx(3600_000, abs=5000)
    published = deliverer.shaping.take_published()
    assert [s.site for s in published] == [SITES["yahoo.example"]]

    asked = len(yahoo.asked_snapshot())
    second = await deliverer.attempt(task("two@yahoo.example"))
    assert second.event["type"] == "deferred"
    assert second.event["reason"] == "suspended: yahoo-tss04"
    assert second.event["attempt"] == 0  # no attempt spent
    assert second.retry is not None
    assert second.retry["not_before"] is not None
    assert second.retry["not_before"].timestamp() == pytest.approx(state.suspended_until)
    assert len(yahoo.asked_snapshot()) == asked  # the server was not asked

    clock.ahead = 3601.0  # the suspension is over: the site is restored
    third = await deliverer.attempt(task("two@yahoo.example"))
    assert third.event["type"] == "delivered"
    assert len(yahoo.delivered_to("two@yahoo.example")) == 1
    deliverer.prune()
    assert deliverer.shaping.sites(clock().timestamp()) == []


async def test_microsoft_block_list_suspends_and_server_busy_slows_after_three(
    make: Any, providers: dict[str, ProviderServer]
) -> None:
    outlook = providers["outlook"]
    clock = Clock()
    deliverer = make(clock)
    outlook.refuse(MICROSOFT_BUSY, 3)
    for n in range(2):
        result = await deliverer.attempt(task(f"busy{n}@outlook.example"))
        assert result.event["type"] == "deferred"
        assert deliverer.shaping.state(SITES["outlook.example"], clock().timestamp()) is None
    await deliverer.attempt(task("busy2@outlook.example"))
    state = deliverer.shaping.state(SITES["outlook.example"], clock().timestamp())
    assert state is not None
    assert (state.slow_rule, state.factor) == ("microsoft-server-busy", 0.5)
    assert not state.suspended(clock().timestamp())

    outlook.refuse(MICROSOFT_BLOCK, 1)
    bounced = await deliverer.attempt(task("blocked@outlook.example"))
    assert bounced.event["type"] == "bounced"
    held = deliverer.shaping.suspension(SITES["outlook.example"], clock().timestamp())
    assert held is not None
    assert held.suspend_rule == "microsoft-blocklisted"
    assert "(S3150)" in held.suspend_reply
    asked = len(outlook.asked_snapshot())
    later = await deliverer.attempt(task("next@outlook.example"))
    assert later.event["reason"] == "suspended: microsoft-blocklisted"
    assert len(outlook.asked_snapshot()) == asked


async def test_gmail_unusual_rate_cuts_the_sites_rate(
    make: Any, providers: dict[str, ProviderServer]
) -> None:
    gmail = providers["gmail"]
    clock = Clock()
    # 4 a second with a burst of 4; a wait of any length is postponed, not slept
    deliverer = make(clock, rate=4.0, burst=4, throttle_max_wait=0.0)
    gmail.refuse(GMAIL_RATE, 1)
    deferred = await deliverer.attempt(task("first@gmail.example"))
    assert deferred.event["type"] == "deferred"
    assert "4.7.28" in (deferred.event["reason"] or "")
    state = deliverer.shaping.state(SITES["gmail.example"], clock().timestamp())
    assert state is not None
    assert (state.slow_rule, state.factor) == ("gmail-unusual-rate", 0.25)
    clock.ahead = 2.0  # the bucket has refilled: without the cut, four could go at once
    outcomes = [await deliverer.attempt(task(f"r{n}@gmail.example")) for n in range(3)]
    assert deliverer.throttle.factor(SITES["gmail.example"]) == 0.25
    assert outcomes[0].event["type"] == "delivered"
    # one a second and a burst of one now: the next ones wait their turn
    reasons = [o.event["reason"] or "" for o in outcomes[1:]]
    assert all(r.startswith(f"throttled: {SITES['gmail.example']} rate") for r in reasons), reasons
    clock.ahead = 2.0 + 3600.0
    deliverer.prune()  # the cut is over: the bucket runs at the full rate again
    assert deliverer.throttle.factor(SITES["gmail.example"]) == 1.0
    clock.ahead += 2.0
    again = [await deliverer.attempt(task(f"s{n}@gmail.example")) for n in range(3)]
    assert [o.event["type"] for o in again] == ["delivered"] * 3
