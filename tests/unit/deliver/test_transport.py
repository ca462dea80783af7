"""The transport's pure parts (routing, addresses, the DATA payload, error mapping, the MX cache
and the pool's bookkeeping), without a network."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiosmtplib
import pytest

from streams.deliver.sites import site_name
from streams.deliver.throttle import DestinationLimits, DestinationThrottle, Limit
from streams.deliver.transport import (
    MAX_MX_HOSTS,
    TransportConfig,
    _failure,
    data_payload,
    envelope_address,
    mx_route,
)
from streams.errors import ConfigError
from streams.mail.dns import MxAnswer, MxCache
from streams.mail.pool import Connection, LocalSlots, Pool
from streams.mail.replies import Category, Disposition, Outcome, Stage

# --- routing ----------------------------------------------------------------------------------


def test_mx_route_keeps_preference_order_and_caps_the_list() -> None:
    hosts = tuple(f"mx{i}.example" for i in range(8))
    assert mx_route(MxAnswer("ok", hosts, 300), "example") == hosts[:MAX_MX_HOSTS]
    assert mx_route(MxAnswer("implicit", ("example",), 300), "example") == ("example",)


@pytest.mark.parametrize(
    ("status", "enhanced"), [("null_mx", "5.1.10"), ("nxdomain", "5.1.2"), ("no_mail", "5.1.2")]
)
def test_mx_route_bounces_domains_without_mail(status: Any, enhanced: str) -> None:
    outcome = mx_route(MxAnswer(status), "example")
    assert isinstance(outcome, Outcome)
    assert outcome.disposition is Disposition.BOUNCED
    assert (outcome.category, outcome.enhanced) == (Category.DOMAIN_NOT_FOUND, enhanced)
    assert outcome.is_hard
    assert not outcome.destination_failure


@pytest.mark.parametrize("status", ["timeout", "error"])
def test_mx_route_defers_when_dns_does_not_answer(status: Any) -> None:
    outcome = mx_route(MxAnswer(status, error="SERVFAIL"), "example")
    assert isinstance(outcome, Outcome)
    assert outcome.disposition is Disposition.DEFERRED
    assert "SERVFAIL" in outcome.text


# --- addresses and payload --------------------------------------------------------------------


def test_envelope_address() -> None:
    assert envelope_address("a@b.example", False) == (b"a@b.example", False)
    assert envelope_address("", False) == (b"", False)  # the null sender of a bounce
    assert envelope_address("joe@bücher.example", False) == (b"joe@xn--bcher-kva.example", False)
    assert envelope_address("用户@b.example", True) == ("用户@b.example".encode(), True)
    assert envelope_address("用户@b.example", False) is None
    for bad in ("a\r\nRCPT TO:<x@y>@b.example", "a>@b.example", "a\x00@b.example"):
        assert envelope_address(bad, True) is None


def test_data_payload_dot_stuffs_and_terminates() -> None:
    assert data_payload(b"a\r\n.b\r\n..c\r\n") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert data_payload(b".first\r\nx") == b"..first\r\nx\r\n.\r\n"
    plain = b"Subject: x\r\n\r\nbody\r\n"
    assert data_payload(plain) == plain + b".\r\n"


# --- errors at the edge -----------------------------------------------------------------------


def test_failure_maps_library_errors_to_outcomes() -> None:
    refused = aiosmtplib.SMTPConnectError("no")
    refused.__cause__ = ConnectionRefusedError()
    assert _failure(refused, Stage.CONNECT).category is Category.CONNECTION
    assert _failure(refused, Stage.CONNECT).destination_failure
    timeout = _failure(aiosmtplib.SMTPReadTimeoutError("slow"), Stage.DATA)
    assert (timeout.category, timeout.stage) == (Category.TIMEOUT, Stage.DATA)
    tls = _failure(ssl.SSLCertVerificationError("bad cert"), Stage.STARTTLS)
    assert (tls.category, tls.disposition) == (Category.TLS, Disposition.DEFERRED)
    reply = _failure(aiosmtplib.SMTPResponseException(550, "5.1.1 no such user"), Stage.RCPT)
    assert (reply.disposition, reply.category, reply.code) == (
        Disposition.BOUNCED,
        Category.USER_UNKNOWN,
        550,
    )
    dropped = _failure(aiosmtplib.SMTPServerDisconnected("gone"), Stage.DATA)
    assert (dropped.category, dropped.stage, dropped.disposition) == (
        Category.CONNECTION,
        Stage.DATA,
        Disposition.DEFERRED,
    )
    no_auth = _failure(aiosmtplib.SMTPException("AUTH not supported"), Stage.AUTH)
    assert (no_auth.category, no_auth.disposition) == (Category.AUTH_FAILED, Disposition.DEFERRED)


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError):
        TransportConfig(mode="relay")
    with pytest.raises(ConfigError):
        TransportConfig(mode="mx", username="u")
    with pytest.raises(ConfigError):
        TransportConfig(mode="mx", max_messages_per_connection=0)
    assert TransportConfig(mode="mx").tls == "opportunistic"


# --- the MX cache -----------------------------------------------------------------------------


class FakeResolver:
    def __init__(self, answer: MxAnswer) -> None:
        self.answer = answer
        self.lookups = 0

    async def lookup(self, domain: str) -> MxAnswer:
        self.lookups += 1
        await asyncio.sleep(0.01)
        return self.answer

    async def addresses(self, host: str) -> list[str]:
        return []


async def test_mx_cache_shares_concurrent_lookups_and_keeps_answers() -> None:
    resolver = FakeResolver(MxAnswer("ok", ("mx.example",), 300))
    cache = MxCache(resolver)  # type: ignore[arg-type]
    answers = await asyncio.gather(*(cache.lookup("example") for _ in range(10)))
    assert {a.hosts for a in answers} == {("mx.example",)}
    await cache.lookup("example")
    assert resolver.lookups == 1


async def test_mx_cache_does_not_keep_failures() -> None:
    resolver = FakeResolver(MxAnswer("timeout"))
    cache = MxCache(resolver)  # type: ignore[arg-type]
    await cache.lookup("example")
    await cache.lookup("example")
    assert resolver.lookups == 2


def test_mx_cache_clamps_ttls() -> None:
    cache = MxCache(FakeResolver(MxAnswer("ok")), min_ttl=60, max_ttl=3600)  # type: ignore[arg-type]
    assert cache.ttl(MxAnswer("ok", ("a",), 5)) == 60
    assert cache.ttl(MxAnswer("ok", ("a",), 86_400)) == 3600
    assert cache.ttl(MxAnswer("nxdomain")) == 60
    assert cache.ttl(MxAnswer("error")) is None


# --- the pool's bookkeeping -------------------------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.is_connected = True
        self.quits = 0

    async def quit(self, timeout: float | None = None) -> None:
        self.quits += 1
        self.is_connected = False

    def close(self) -> None:
        self.is_connected = False


def opened(conn: Connection | None) -> Connection:
    assert conn is not None
    assert conn.client is None
    conn.client = FakeClient()  # type: ignore[assignment]
    return conn


def one_connection_throttle() -> DestinationThrottle:
    return DestinationThrottle(DestinationLimits(default=Limit(connections=1), overrides={}))


async def test_pool_hands_a_released_session_to_the_waiter() -> None:
    limiter = one_connection_throttle()
    pool = Pool(limiter.slots, max_messages=10, idle_timeout=30, wait=5)
    first = opened(await pool.acquire("h:25", "h", "h"))
    waiting = asyncio.ensure_future(pool.acquire("h:25", "h", "h"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    pool.release(first, reusable=True)
    assert await waiting is first
    assert limiter.connections("h") == 1
    assert pool.opened == 1


async def test_pool_wait_is_bounded() -> None:
    pool = Pool(one_connection_throttle().slots, max_messages=10, idle_timeout=30, wait=0.05)
    opened(await pool.acquire("h:25", "h", "h"))
    assert await pool.acquire("h:25", "h", "h") is None


async def test_pool_retires_sessions_after_max_messages_and_on_errors() -> None:
    limiter = one_connection_throttle()
    pool = Pool(limiter.slots, max_messages=2, idle_timeout=30, wait=1)
    conn = opened(await pool.acquire("h:25", "h", "h"))
    client = conn.client
    conn.sent = 2
    pool.release(conn, reusable=True)
    await pool.close()
    assert client.quits == 1  # type: ignore[union-attr]
    assert limiter.connections("h") == 0

    pool = Pool(limiter.slots, max_messages=2, idle_timeout=30, wait=1)
    broken = opened(await pool.acquire("h:25", "h", "h"))
    client = broken.client
    pool.release(broken, reusable=False)
    assert client.quits == 0  # type: ignore[union-attr]  # no QUIT on a session in doubt
    assert limiter.connections("h") == 0


async def test_pool_prune_closes_idle_sessions() -> None:
    limiter = one_connection_throttle()
    pool = Pool(limiter.slots, max_messages=10, idle_timeout=0.01, wait=1)
    conn = opened(await pool.acquire("h:25", "h", "h"))
    pool.release(conn, reusable=True)
    assert pool.idle("h:25") == 1
    await asyncio.sleep(0.03)
    assert pool.prune() == 1
    await pool.close()
    assert pool.idle("h:25") == 0
    assert limiter.connections("h") == 0


class LosingSlots(LocalSlots):
    """In-process slots that can lose every slot at once, as the shared ones do when their
    database session ends."""

    def __init__(self) -> None:
        super().__init__(lambda _group: 2)
        self.listeners: list[Any] = []
        self.slots: list[Any] = []
        self.lost = False

    async def open_connection(self, group: str) -> Any:
        slot = None if self.lost else self.take(group)
        if slot is not None:
            self.slots.append(slot)
        return slot

    def on_lost(self, callback: Any) -> None:
        self.listeners.append(callback)

    def lose(self) -> None:
        self.lost = True
        for slot in self.slots:
            slot.held = False
        for listener in self.listeners:
            listener()


async def test_sessions_whose_slots_are_lost_close_and_no_new_ones_open() -> None:
    budget = LosingSlots()
    pool = Pool(budget, max_messages=10, idle_timeout=30, wait=0.05)
    idle = opened(await pool.acquire("h:25", "h", "site"))
    busy = opened(await pool.acquire("h:25", "h", "site"))
    idle_client, busy_client = idle.client, busy.client
    pool.release(idle, reusable=True)
    assert pool.idle("h:25") == 1
    budget.lose()
    await asyncio.sleep(0)  # the QUIT runs in a task of its own
    assert pool.idle("h:25") == 0  # closed at once, not at the next prune
    assert idle_client.quits == 1  # type: ignore[union-attr]
    # the session in use finishes its transaction, then closes instead of going idle
    pool.release(busy, reusable=True)
    await asyncio.sleep(0)
    assert busy_client.quits == 1  # type: ignore[union-attr]
    assert pool.idle("h:25") == 0
    # and while the budget holds nothing, nothing opens
    assert await pool.acquire("h:25", "h", "site") is None
    await pool.close()


async def test_a_site_may_carry_fewer_messages_per_session() -> None:
    limiter = DestinationThrottle(DestinationLimits(default=Limit(connections=1), overrides={}))
    pool = Pool(limiter.slots, max_messages=10, idle_timeout=30, wait=1)
    conn = opened(await pool.acquire("h:25", "h", "h", 2))
    assert conn.max_messages == 2
    client = conn.client
    conn.sent = 2
    pool.release(conn, reusable=True)
    await asyncio.sleep(0)
    assert client.quits == 1  # type: ignore[union-attr]
    wide = opened(await pool.acquire("h:25", "h", "h", 50))
    assert wide.max_messages == 10  # never more than the pool's own
    await pool.close()


async def test_pool_evicts_an_idle_session_of_the_same_budget() -> None:
    # both hosts are of one site, so they share its one connection
    limits = DestinationLimits(overrides={"big.example": Limit(connections=1)})
    site = site_name(["mx1.big.example", "mx2.big.example"])
    limiter = DestinationThrottle(limits)
    pool = Pool(limiter.slots, max_messages=10, idle_timeout=30, wait=1)
    a = opened(await pool.acquire("mx1.big.example:25", "mx1.big.example", site))
    pool.release(a, reusable=True)
    b = await pool.acquire("mx2.big.example:25", "mx2.big.example", site)
    assert b is not None
    assert b.host == "mx2.big.example"
    assert pool.idle("mx1.big.example:25") == 0
    assert limiter.connections(site) == 1
