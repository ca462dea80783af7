"""The SMTP transport against real aiosmtpd servers on loopback (no Kafka): routing, TLS, AUTH,
the connection pool, and every way a session can go wrong turned into an outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from streams.bench.dns_server import Zone, ZoneServer
from streams.contract.records import DeliveryTask
from streams.deliver.dkim import Signer
from streams.deliver.keyring import KeyRing
from streams.deliver.retry import RetryPolicy
from streams.deliver.service import Deliverer, DeliveryRules
from streams.deliver.sites import relay_site
from streams.deliver.throttle import DestinationLimits, DestinationThrottle, Limit
from streams.deliver.transport import Transport, TransportConfig
from streams.mail.dns import MxResolver
from streams.mail.pool import LocalSlots, Slot
from streams.mail.replies import Category, Disposition, Stage
from tests.peers.smtp_behaviours import Behaviour, GreetingServer, SinkServer, TlsFiles, make_tls
from tests.peers.smtp_servers import StallServer, free_port_on

MESSAGE = (
    b"From: sender@postwire.test\r\nTo: rcpt@dest.test\r\nSubject: hello\r\n\r\n"
    b"first line\r\n.a line starting with a dot\r\nlast line\r\n"
)
SENDER = "sender@postwire.test"

# one loopback address per test (the ports are free ones), clear of tests/peers/world.py's
_next_host = iter(f"127.0.0.{n}" for n in range(60, 250))


def next_host() -> str:
    return next(_next_host)


def throttle(connections: int = 10) -> DestinationThrottle:
    limit = Limit(connections=connections, rate=10_000.0, burst=1_000)
    return DestinationThrottle(DestinationLimits(default=limit, overrides={}))


Factory = Callable[..., Transport]


@pytest.fixture
async def make_transport() -> AsyncIterator[Factory]:
    made: list[Transport] = []

    def make(
        server: SinkServer | None = None,
        *,
        limiter: DestinationThrottle | None = None,
        resolver: MxResolver | None = None,
        **overrides: Any,
    ) -> Transport:
        values: dict[str, Any] = {
            "mode": "relay",
            "tls": "none",
            "connect_timeout": 2.0,
            "command_timeout": 2.0,
            "data_timeout": 2.0,
            "pool_wait": 2.0,
        }
        if server is not None:
            values.update(relay_host=server.host, relay_port=server.port)
        values.update(overrides)
        transport = Transport(TransportConfig(**values), limiter or throttle(), resolver)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., SinkServer]]:
    started: list[SinkServer] = []

    def start(host: str | None = None, behaviour: Behaviour | None = None, **kw: Any) -> SinkServer:
        server = SinkServer(host or next_host(), behaviour, **kw).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    hosts = [f"127.0.0.{n}" for n in range(60, 250)]
    return make_tls(tmp_path_factory.mktemp("tls"), ["sink.test", *hosts])


# --- relay: replies, failures, and the session surviving them ---------------------------------


async def test_relay_delivers_and_reports_the_final_reply(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    delivery = await make_transport(server).send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    outcome = delivery.outcome
    assert outcome.disposition is Disposition.DELIVERED
    assert (outcome.code, outcome.enhanced, outcome.stage) == (250, "2.0.0", Stage.AFTER_DATA)
    assert "queued as Q1" in outcome.text
    assert delivery.host == server.host
    assert not delivery.tls
    [received] = server.received
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ("rcpt@dest.test",)
    assert received.data == MESSAGE  # dot-stuffed on the wire, unstuffed by the server


async def test_temporary_failure_then_accepted_on_the_same_session(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers(behaviour=Behaviour(defer_first=1))
    transport = make_transport(server)
    first = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert first.outcome.disposition is Disposition.DEFERRED
    assert (first.outcome.code, first.outcome.stage) == (451, Stage.RCPT)
    second = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert second.outcome.disposition is Disposition.DELIVERED
    assert server.connections == 1
    assert server.count("rset") == 1  # after the failed transaction only


async def test_unknown_user_bounces_hard_and_the_session_carries_on(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    unknown = "550 5.1.1 <nobody@dest.test>: Recipient address rejected: User unknown"
    server = servers(behaviour=Behaviour(rcpt_replies={"nobody@dest.test": unknown}))
    transport = make_transport(server)
    bounced = await transport.send("dest.test", SENDER, "nobody@dest.test", MESSAGE)
    assert bounced.outcome.disposition is Disposition.BOUNCED
    assert bounced.outcome.category is Category.USER_UNKNOWN
    assert bounced.outcome.is_hard
    assert (bounced.outcome.stage, bounced.outcome.enhanced) == (Stage.RCPT, "5.1.1")
    delivered = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert delivered.outcome.disposition is Disposition.DELIVERED
    assert server.connections == 1
    assert server.count("rset") == 1
    assert [r.rcpt_tos for r in server.received] == [("rcpt@dest.test",)]


async def test_connection_dropped_mid_data_defers_and_next_message_reconnects(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    behaviour = Behaviour(drop_in_data=True)
    server = servers(behaviour=behaviour)
    transport = make_transport(server)
    delivery = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    outcome = delivery.outcome
    assert outcome.disposition is Disposition.DEFERRED
    # the message was in, its verdict never came: the stage that says it may have arrived
    assert (outcome.category, outcome.stage, outcome.code) == (
        Category.CONNECTION,
        Stage.AFTER_DATA,
        None,
    )
    behaviour.drop_in_data = False
    again = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert again.outcome.disposition is Disposition.DELIVERED
    assert server.connections == 2


async def test_server_stalling_after_data_times_out(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers(behaviour=Behaviour(data_delay=3.0))
    transport = make_transport(server, data_timeout=0.3)
    outcome = (await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)).outcome
    assert outcome.disposition is Disposition.DEFERRED
    assert (outcome.category, outcome.stage) == (Category.TIMEOUT, Stage.AFTER_DATA)
    assert transport.pool.idle(f"{server.host}:{server.port}") == 0  # a desynced session goes


async def test_silent_server_times_out_at_the_greeting(make_transport: Factory) -> None:
    host = next_host()
    stall = StallServer(host, free_port_on(host))
    stall.start()
    try:
        transport = make_transport(
            None, relay_host=host, relay_port=stall.port, connect_timeout=0.3
        )
        outcome = (await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)).outcome
    finally:
        stall.stop()
    assert outcome.disposition is Disposition.DEFERRED
    assert (outcome.category, outcome.stage) == (Category.TIMEOUT, Stage.CONNECT)
    assert outcome.destination_failure


async def test_refused_connection_defers(make_transport: Factory) -> None:
    host = next_host()
    transport = make_transport(None, relay_host=host, relay_port=free_port_on(host))
    outcome = (await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)).outcome
    assert outcome.disposition is Disposition.DEFERRED
    assert (outcome.category, outcome.stage) == (Category.CONNECTION, Stage.CONNECT)
    assert "refused" in outcome.text.lower() or "connect" in outcome.text.lower()


async def test_idle_session_closed_by_the_server_is_not_reused(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers(session_timeout=0.3)
    transport = make_transport(server, idle_timeout=60)
    first = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    await asyncio.sleep(0.8)  # the server times the session out; the pool still holds it
    second = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert first.outcome.disposition is Disposition.DELIVERED
    assert second.outcome.disposition is Disposition.DELIVERED
    assert server.connections == 2
    assert len(server.received) == 2


async def test_session_refused_on_reuse_is_retried_on_a_new_one(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers(behaviour=Behaviour(mail_421_after_idle=0.2))
    transport = make_transport(server, idle_timeout=60)
    first = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    await asyncio.sleep(0.4)
    second = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert first.outcome.disposition is Disposition.DELIVERED
    assert second.outcome.disposition is Disposition.DELIVERED
    assert server.count("mail") == 3  # the refused MAIL, then again on the new session
    assert server.connections == 2


# --- STARTTLS ---------------------------------------------------------------------------------


async def test_required_tls_with_the_ca_file_delivers_encrypted(
    servers: Callable[..., SinkServer], make_transport: Factory, tls_files: TlsFiles
) -> None:
    server = servers(tls=tls_files.server_context(), require_starttls=True)
    transport = make_transport(server, tls="required", ca_file=str(tls_files.ca))
    delivery = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert delivery.outcome.disposition is Disposition.DELIVERED
    assert delivery.tls
    assert [r.tls for r in server.received] == [True]


async def test_certificate_not_trusted_by_the_default_cas_defers_as_tls(
    servers: Callable[..., SinkServer], make_transport: Factory, tls_files: TlsFiles
) -> None:
    server = servers(tls=tls_files.server_context(), require_starttls=True)
    transport = make_transport(server, tls="required")
    outcome = (await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)).outcome
    assert outcome.disposition is Disposition.DEFERRED
    assert (outcome.category, outcome.stage) == (Category.TLS, Stage.STARTTLS)
    assert server.received == []


async def test_unverified_tls_when_verification_is_off(
    servers: Callable[..., SinkServer], make_transport: Factory, tls_files: TlsFiles
) -> None:
    server = servers(tls=tls_files.server_context(), require_starttls=True)
    transport = make_transport(server, tls="required", tls_verify=False)
    delivery = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert delivery.outcome.disposition is Disposition.DELIVERED
    assert delivery.tls


async def test_required_tls_against_a_server_without_starttls_defers(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    transport = make_transport(server, tls="required")
    outcome = (await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)).outcome
    assert outcome.disposition is Disposition.DEFERRED
    assert (outcome.category, outcome.stage) == (Category.TLS, Stage.STARTTLS)
    assert server.count("mail") == 0  # not a byte of mail in the clear


async def test_opportunistic_tls_falls_back_to_plain_without_starttls(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    transport = make_transport(server, tls="opportunistic")
    delivery = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert delivery.outcome.disposition is Disposition.DELIVERED
    assert not delivery.tls
    assert [r.tls for r in server.received] == [False]


async def test_opportunistic_tls_is_used_when_offered(
    servers: Callable[..., SinkServer], make_transport: Factory, tls_files: TlsFiles
) -> None:
    server = servers(tls=tls_files.server_context())
    transport = make_transport(server, tls="opportunistic", ca_file=str(tls_files.ca))
    delivery = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert delivery.outcome.disposition is Disposition.DELIVERED
    assert [r.tls for r in server.received] == [True]


# --- AUTH -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_auth_in_plain_text(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers(auth=("relayuser", "s3cret"), auth_require_tls=False)
    good = make_transport(server, username="relayuser", password="s3cret")
    delivery = await good.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert delivery.outcome.disposition is Disposition.DELIVERED
    assert server.count("auth_ok") == 1

    bad = make_transport(server, username="relayuser", password="wrong")
    refused = (await bad.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)).outcome
    assert refused.disposition is Disposition.DEFERRED  # our configuration, not the message
    assert (refused.category, refused.stage, refused.code) == (
        Category.AUTH_FAILED,
        Stage.AUTH,
        535,
    )

    anonymous = make_transport(server)
    required = (await anonymous.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)).outcome
    assert required.disposition is Disposition.DEFERRED
    assert (required.category, required.stage) == (Category.AUTH_FAILED, Stage.MAIL)
    assert len(server.received) == 1


async def test_auth_after_starttls(
    servers: Callable[..., SinkServer], make_transport: Factory, tls_files: TlsFiles
) -> None:
    server = servers(tls=tls_files.server_context(), auth=("relayuser", "s3cret"))
    transport = make_transport(
        server,
        tls="opportunistic",
        ca_file=str(tls_files.ca),
        username="relayuser",
        password="s3cret",
    )
    delivery = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert delivery.outcome.disposition is Disposition.DELIVERED
    assert delivery.tls
    assert server.count("auth_ok") == 1


# --- addresses --------------------------------------------------------------------------------


async def test_smtputf8_is_used_only_when_the_address_needs_it(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    transport = make_transport(server)
    utf8 = await transport.send("dest.test", SENDER, "用户@dest.test", MESSAGE)
    idn = await transport.send("bücher.test", SENDER, "joe@bücher.test", MESSAGE)
    assert utf8.outcome.disposition is Disposition.DELIVERED
    assert idn.outcome.disposition is Disposition.DELIVERED
    assert [(r.rcpt_tos, r.smtputf8) for r in server.received] == [
        (("用户@dest.test",), True),
        (("joe@xn--bcher-kva.test",), False),  # an ASCII local part travels as the A-label
    ]


async def test_utf8_address_without_smtputf8_bounces(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers(smtputf8=False)
    transport = make_transport(server)
    outcome = (await transport.send("dest.test", SENDER, "用户@dest.test", MESSAGE)).outcome
    assert outcome.disposition is Disposition.BOUNCED
    assert (outcome.enhanced, outcome.stage) == ("5.6.7", Stage.RCPT)
    assert not outcome.is_hard
    assert server.count("mail") == 0
    after = await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert after.outcome.disposition is Disposition.DELIVERED
    assert server.connections == 1


# --- the pool ---------------------------------------------------------------------------------


async def test_pool_reuses_sessions_within_the_connection_limit(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers(behaviour=Behaviour(data_delay=0.01))
    limiter = throttle(connections=2)
    transport = make_transport(server, limiter=limiter)
    deliveries = await asyncio.gather(
        *(transport.send("dest.test", SENDER, f"r{i}@dest.test", MESSAGE) for i in range(20))
    )
    assert all(d.outcome.disposition is Disposition.DELIVERED for d in deliveries)
    assert len(server.received) == 20
    assert server.max_open <= 2
    assert server.connections <= 2
    assert limiter.connections(relay_site(server.host, server.port)) <= 2
    await transport.close()
    assert limiter.connections(relay_site(server.host, server.port)) == 0
    await asyncio.sleep(0.1)
    assert server.open == 0


async def test_pool_reconnects_after_max_messages_per_connection(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers(behaviour=Behaviour(data_delay=0.01))
    transport = make_transport(
        server, limiter=throttle(connections=2), max_messages_per_connection=5
    )
    deliveries = await asyncio.gather(
        *(transport.send("dest.test", SENDER, f"r{i}@dest.test", MESSAGE) for i in range(20))
    )
    assert all(d.outcome.disposition is Disposition.DELIVERED for d in deliveries)
    assert server.connections >= 4
    assert server.max_open <= 2
    assert server.count("rset") == 0  # nothing failed, so nothing was reset


async def test_waiting_for_a_connection_is_bounded(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers(behaviour=Behaviour(data_delay=1.0))
    transport = make_transport(server, limiter=throttle(connections=1), pool_wait=0.2)
    first, second = await asyncio.gather(
        transport.send("dest.test", SENDER, "a@dest.test", MESSAGE),
        transport.send("dest.test", SENDER, "b@dest.test", MESSAGE),
    )
    assert first.outcome.disposition is Disposition.DELIVERED
    assert second.outcome.disposition is Disposition.DEFERRED
    assert second.outcome.category is Category.RATE_LIMITED
    assert "connection limit" in second.outcome.text
    assert second.retry_after is not None  # our limit: postponed, no attempt spent
    assert not second.outcome.destination_failure  # about us, not the destination
    assert server.connections == 1


async def test_waiters_get_the_released_session(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers(behaviour=Behaviour(data_delay=0.05))
    transport = make_transport(server, limiter=throttle(connections=1), pool_wait=5)
    deliveries = await asyncio.gather(
        *(transport.send("dest.test", SENDER, f"r{i}@dest.test", MESSAGE) for i in range(5))
    )
    assert [d.outcome.disposition for d in deliveries] == [Disposition.DELIVERED] * 5
    assert server.connections == 1


async def test_idle_sessions_are_closed(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    limiter = throttle()
    transport = make_transport(server, limiter=limiter, idle_timeout=0.2)
    await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert server.open == 1
    assert limiter.connections(relay_site(server.host, server.port)) == 1
    await asyncio.sleep(0.8)  # the reaper runs every idle_timeout / 2
    assert server.open == 0
    assert limiter.connections(relay_site(server.host, server.port)) == 0
    assert server.count("rset") == 0


async def test_prune_closes_only_sessions_past_the_idle_timeout(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    transport = make_transport(server, idle_timeout=60)
    await transport.send("dest.test", SENDER, "rcpt@dest.test", MESSAGE)
    assert transport.prune() == 0
    assert server.open == 1


# --- direct to MX -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mx_port() -> int:
    return free_port_on("127.0.0.1")


@pytest.fixture(scope="module")
def zone() -> Iterator[ZoneServer]:
    server = ZoneServer(Zone(), host="127.0.0.53", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def resolver(zone: ZoneServer) -> MxResolver:
    return MxResolver([zone.nameserver], timeout=0.5, tries=1)


def mx_to(zone: ZoneServer, domain: str, *hosts: tuple[int, str, str]) -> None:
    for pref, name, address in hosts:
        zone.zone.mx.setdefault(domain, []).append((pref, name))
        zone.zone.a[name] = address


async def test_mx_falls_back_past_a_dead_preferred_host(
    servers: Callable[..., SinkServer],
    make_transport: Factory,
    zone: ZoneServer,
    resolver: MxResolver,
) -> None:
    backup = servers()
    dead = next_host()  # nothing listens there
    mx_to(
        zone,
        "fallback.test",
        (5, "mx1.fallback.test", dead),
        (10, "mx2.fallback.test", backup.host),
    )
    transport = make_transport(mode="mx", resolver=resolver, mx_port=backup.port)
    delivery = await transport.send("fallback.test", SENDER, "rcpt@fallback.test", MESSAGE)
    assert delivery.outcome.disposition is Disposition.DELIVERED
    assert (delivery.host, delivery.address) == ("mx2.fallback.test", backup.host)
    assert len(backup.received) == 1


async def test_mx_falls_back_past_a_4xx_greeting(
    servers: Callable[..., SinkServer],
    make_transport: Factory,
    zone: ZoneServer,
    resolver: MxResolver,
) -> None:
    backup = servers()
    busy = GreetingServer(next_host(), port=backup.port).start()
    try:
        mx_to(
            zone, "busy.test", (5, "mx1.busy.test", busy.host), (10, "mx2.busy.test", backup.host)
        )
        transport = make_transport(mode="mx", resolver=resolver, mx_port=backup.port)
        delivery = await transport.send("busy.test", SENDER, "rcpt@busy.test", MESSAGE)
    finally:
        busy.stop()
    assert busy.connections == 1
    assert delivery.outcome.disposition is Disposition.DELIVERED
    assert delivery.host == "mx2.busy.test"


async def test_all_mx_hosts_down_defers_with_the_last_failure(
    make_transport: Factory, zone: ZoneServer, resolver: MxResolver, mx_port: int
) -> None:
    mx_to(zone, "down.test", (5, "mx1.down.test", next_host()), (10, "mx2.down.test", next_host()))
    transport = make_transport(mode="mx", resolver=resolver, mx_port=mx_port)
    delivery = await transport.send("down.test", SENDER, "rcpt@down.test", MESSAGE)
    assert delivery.outcome.disposition is Disposition.DEFERRED
    assert delivery.outcome.stage is Stage.CONNECT
    assert delivery.host == "mx2.down.test"


async def test_null_mx_bounces(
    make_transport: Factory, zone: ZoneServer, resolver: MxResolver, mx_port: int
) -> None:
    zone.zone.mx["nullmx.test"] = [(0, ".")]
    transport = make_transport(mode="mx", resolver=resolver, mx_port=mx_port)
    outcome = (await transport.send("nullmx.test", SENDER, "a@nullmx.test", MESSAGE)).outcome
    assert outcome.disposition is Disposition.BOUNCED
    assert (outcome.category, outcome.enhanced) == (Category.DOMAIN_NOT_FOUND, "5.1.10")
    assert outcome.is_hard


async def test_unknown_domain_bounces(
    make_transport: Factory, resolver: MxResolver, mx_port: int
) -> None:
    transport = make_transport(mode="mx", resolver=resolver, mx_port=mx_port)
    outcome = (await transport.send("nowhere.test", SENDER, "a@nowhere.test", MESSAGE)).outcome
    assert outcome.disposition is Disposition.BOUNCED
    assert (outcome.category, outcome.enhanced) == (Category.DOMAIN_NOT_FOUND, "5.1.2")


async def test_mx_answers_are_cached(
    servers: Callable[..., SinkServer],
    make_transport: Factory,
    zone: ZoneServer,
    resolver: MxResolver,
) -> None:
    server = servers()
    mx_to(zone, "cached.test", (10, "mx.cached.test", server.host))
    transport = make_transport(mode="mx", resolver=resolver, mx_port=server.port)
    for i in range(3):
        delivery = await transport.send("cached.test", SENDER, f"r{i}@cached.test", MESSAGE)
        assert delivery.outcome.disposition is Disposition.DELIVERED
    assert zone.queries("cached.test", "MX") == 1
    assert zone.queries("mx.cached.test", "A") == 1


async def test_dns_timeout_defers(make_transport: Factory, mx_port: int) -> None:
    # its own DNS server: the silent name ties up a server thread for seconds
    slow = ZoneServer(Zone(silent={"slowdns.test"}), host="127.0.0.53", port=0)
    slow.start()
    try:
        resolver = MxResolver([slow.nameserver], timeout=0.3, tries=1)
        transport = make_transport(mode="mx", resolver=resolver, mx_port=mx_port)
        delivery = await transport.send("slowdns.test", SENDER, "a@slowdns.test", MESSAGE)
    finally:
        slow.stop()
    assert delivery.outcome.disposition is Disposition.DEFERRED
    assert delivery.outcome.stage is Stage.CONNECT
    assert delivery.host == ""


# --- sites ------------------------------------------------------------------------------------


async def test_domains_on_the_same_mx_hosts_are_one_site(
    make_transport: Factory, zone: ZoneServer, resolver: MxResolver, mx_port: int
) -> None:
    address = next_host()
    mx_to(zone, "one.sites.test", (10, "mx2.shared.test", address), (5, "mx1.shared.test", address))
    mx_to(zone, "two.sites.test", (5, "mx2.shared.test", address), (10, "mx1.shared.test", address))
    mx_to(zone, "own.sites.test", (5, "mx.own.test", address))
    zone.zone.mx["nullmx.sites.test"] = [(0, ".")]
    transport = make_transport(mode="mx", resolver=resolver, mx_port=mx_port)
    shared = "mx1.shared.test,mx2.shared.test"
    assert await transport.site("one.sites.test") == shared
    assert await transport.site("TWO.sites.test.") == shared
    assert await transport.site("own.sites.test") == "mx.own.test"
    # no hosts to send to: a site of its own, named after the domain
    assert await transport.site("nullmx.sites.test") == "nullmx.sites.test"


async def test_relay_mode_is_one_site(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    transport = make_transport(server)
    site = relay_site(server.host, server.port)
    assert await transport.site("a.example") == await transport.site("b.example") == site
    delivery = await transport.send("a.example", SENDER, "rcpt@a.example", MESSAGE)
    assert delivery.site == site


def _rated(rate: float) -> DestinationThrottle:
    limit = Limit(connections=2, rate=rate, burst=1)
    return DestinationThrottle(DestinationLimits(default=limit, overrides={}))


async def test_a_short_site_wait_is_waited_out_in_place(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    transport = make_transport(server, limiter=_rated(10.0), pace_max_wait=1.0)
    began = time.monotonic()
    for i in range(4):
        delivery = await transport.send("dest.test", SENDER, f"r{i}@dest.test", MESSAGE)
        assert delivery.outcome.disposition is Disposition.DELIVERED
        assert delivery.retry_after is None
    # a burst of one, then one every 100 ms
    assert time.monotonic() - began >= 0.28
    assert len(server.received) == 4


async def test_a_site_wait_longer_than_allowed_gives_the_message_back(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    limiter = _rated(1.0)
    transport = make_transport(server, limiter=limiter, pace_max_wait=0.2)
    first = await transport.send("dest.test", SENDER, "a@dest.test", MESSAGE)
    assert first.outcome.disposition is Disposition.DELIVERED
    second = await transport.send("dest.test", SENDER, "b@dest.test", MESSAGE)
    assert second.retry_after == pytest.approx(1.0, abs=0.2)
    assert second.outcome.disposition is Disposition.DEFERRED
    assert second.outcome.category is Category.RATE_LIMITED
    assert second.outcome.text.startswith("throttled: ")
    assert not second.outcome.destination_failure
    assert len(server.received) == 1
    # the session was given back, not closed: the next message after the wait reuses it
    assert limiter.connections(relay_site(server.host, server.port)) == 1
    await asyncio.sleep(second.retry_after or 0)
    third = await transport.send("dest.test", SENDER, "b@dest.test", MESSAGE)
    assert third.outcome.disposition is Disposition.DELIVERED
    assert server.connections == 1


def _task(n: int) -> DeliveryTask:
    recipient: dict[str, Any] = {
        "email": f"r{n}@dest.test",
        "name": None,
        "kind": "to",
        "substitutions": {},
        "custom_args": {},
    }
    task: dict[str, Any] = {
        "task_id": f"task-{n}",
        "message_id": "m1",
        "request_id": "m1",
        "tenant": "t1",
        "priority": "normal",
        "domain": "dest.test",
        "from": {"email": SENDER, "name": None},
        "reply_to": None,
        "recipient": recipient,
        "content": {
            "subject": "Hello",
            "text": "Hi\r\n",
            "html": None,
            "template_id": None,
            "headers": {},
            "attachments": [],
        },
        "substitutions": {},
        "categories": [],
        "custom_args": {},
        "attempt": 0,
        "not_before": None,
        "first_attempt_at": None,
        "created_at": datetime.now(UTC),
    }
    return cast(DeliveryTask, task)


async def test_a_message_the_site_rate_gives_back_is_postponed_without_an_attempt(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    limiter = _rated(0.5)
    transport = make_transport(server, limiter=limiter, pace_max_wait=0.2)
    deliverer = Deliverer(
        transport,
        Signer(KeyRing(lambda _tenant, _domain: None)),
        limiter,
        DeliveryRules(RetryPolicy()),
        clock=lambda: datetime.now(UTC),
    )
    try:
        assert await deliverer.site("dest.test") == relay_site(server.host, server.port)
        first = await deliverer.attempt(_task(1))
        second = await deliverer.attempt(_task(2))
    finally:
        await deliverer.close()
    assert first.delivered
    assert not second.delivered
    assert second.event["type"] == "deferred"
    assert (second.event["reason"] or "").startswith("throttled: ")
    assert second.retry is not None
    assert second.retry["attempt"] == 0  # a postponement spends no attempt
    wait = (second.retry["not_before"] or datetime.now(UTC)) - datetime.now(UTC)
    assert 1.0 <= wait.total_seconds() <= 2.5
    assert len(server.received) == 1


class _Losable(LocalSlots):
    """In-process slots whose slots can all be lost at once, as the shared ones are when their
    database session ends."""

    shared = False

    def __init__(self) -> None:
        super().__init__(lambda _site: 2)
        self.taken: list[Slot] = []

    async def open_connection(self, group: str) -> Slot | None:
        slot = self.take(group)
        if slot is not None:
            self.taken.append(slot)
        return slot

    def lose(self) -> None:
        for slot in self.taken:
            slot.held = False


async def test_no_transaction_starts_on_a_session_whose_slot_was_lost(
    servers: Callable[..., SinkServer], make_transport: Factory
) -> None:
    server = servers()
    slots = _Losable()
    limits = DestinationLimits(default=Limit(connections=2, rate=5.0, burst=1), overrides={})
    transport = make_transport(
        server, limiter=DestinationThrottle(limits, slots), pace_max_wait=1.0
    )
    first = await transport.send("dest.test", SENDER, "a@dest.test", MESSAGE)
    assert first.outcome.disposition is Disposition.DELIVERED
    # the next one waits 200 ms for the rate, with the session; the slot goes meanwhile
    sending = asyncio.ensure_future(transport.send("dest.test", SENDER, "b@dest.test", MESSAGE))
    await asyncio.sleep(0.05)
    slots.lose()
    second = await sending
    assert second.retry_after is not None
    assert "was lost" in second.outcome.text
    assert len(server.received) == 1
    await asyncio.sleep(0.2)
    assert server.open == 0  # the session closed rather than going back to the pool
