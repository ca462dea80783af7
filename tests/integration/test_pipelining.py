"""RFC 2920 pipelining against real servers on loopback (no Kafka): aiosmtpd offering PIPELINING
(tests/peers/smtp_behaviours.py), and a scripted raw server for replies aiosmtpd never gives.
Every send is bounded by a timeout, so a transaction that hangs fails the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from streams.deliver.throttle import DestinationLimits, DestinationThrottle, Limit
from streams.deliver.transport import Delivery, Transport, TransportConfig
from streams.mail.replies import Category, Disposition, Stage
from tests.peers.smtp_behaviours import Behaviour, SinkServer, make_tls

MESSAGE = b"From: sender@postwire.test\r\nSubject: hi\r\n\r\nline\r\n.dot line\r\n"
SENDER = "sender@postwire.test"
RCPTS = ("a@dest.test", "b@dest.test", "c@dest.test")
BOUND = 20.0  # no exchange here may take anywhere near this long

_next_host = iter(f"127.0.1.{n}" for n in range(10, 250))


def throttle() -> DestinationThrottle:
    limit = Limit(connections=10, rate=10_000.0, burst=1_000)
    return DestinationThrottle(DestinationLimits(default=limit, overrides={}))


@pytest.fixture
async def make_transport() -> AsyncIterator[Callable[..., Transport]]:
    made: list[Transport] = []

    def make(host: str, port: int, **overrides: Any) -> Transport:
        values: dict[str, Any] = {
            "mode": "relay",
            "relay_host": host,
            "relay_port": port,
            "tls": "none",
            "connect_timeout": 5.0,
            "command_timeout": 5.0,
            "data_timeout": 5.0,
            "pool_wait": 5.0,
        }
        values.update(overrides)
        transport = Transport(TransportConfig(**values), throttle(), None)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., SinkServer]]:
    started: list[SinkServer] = []

    def start(behaviour: Behaviour | None = None, **kw: Any) -> SinkServer:
        server = SinkServer(next(_next_host), behaviour, **kw).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def send_many(transport: Transport, rcpts: tuple[str, ...]) -> tuple[Delivery, ...]:
    return await asyncio.wait_for(transport.send_many("dest.test", SENDER, rcpts, MESSAGE), BOUND)


def envelope_in_one_read(server: SinkServer) -> bool:
    return any(b"MAIL FROM" in r and b"RCPT TO" in r and b"DATA\r\n" in r for r in server.reads)


# --- aiosmtpd ---------------------------------------------------------------------------------


async def test_pipelined_envelope_goes_in_one_write(
    servers: Callable[..., SinkServer], make_transport: Callable[..., Transport]
) -> None:
    server = servers()
    transport = make_transport(server.host, server.port)
    deliveries = await send_many(transport, RCPTS)
    assert [d.outcome.disposition for d in deliveries] == [Disposition.DELIVERED] * 3
    assert envelope_in_one_read(server)
    [received] = server.received
    assert received.rcpt_tos == RCPTS
    assert received.data == MESSAGE  # dot-stuffed on the wire, unstuffed by the server


async def test_without_pipelining_the_dialogue_is_plain(
    servers: Callable[..., SinkServer], make_transport: Callable[..., Transport]
) -> None:
    server = servers(Behaviour(pipelining=False))
    transport = make_transport(server.host, server.port)
    deliveries = await send_many(transport, RCPTS)
    assert [d.outcome.disposition for d in deliveries] == [Disposition.DELIVERED] * 3
    assert not any(b"MAIL FROM" in r and b"RCPT TO" in r for r in server.reads)
    assert [r.rcpt_tos for r in server.received] == [RCPTS]


async def test_one_rcpt_of_many_refused(
    servers: Callable[..., SinkServer], make_transport: Callable[..., Transport]
) -> None:
    unknown = "550 5.1.1 <b@dest.test>: Recipient address rejected: User unknown"
    server = servers(Behaviour(rcpt_replies={"b@dest.test": unknown}))
    transport = make_transport(server.host, server.port)
    first, second, third = await send_many(transport, RCPTS)
    assert first.outcome.disposition is third.outcome.disposition is Disposition.DELIVERED
    assert second.outcome.disposition is Disposition.BOUNCED
    assert (second.outcome.stage, second.outcome.category) == (Stage.RCPT, Category.USER_UNKNOWN)
    assert [r.rcpt_tos for r in server.received] == [("a@dest.test", "c@dest.test")]
    # the session carries on
    again = await asyncio.wait_for(transport.send("dest.test", SENDER, RCPTS[0], MESSAGE), BOUND)
    assert again.outcome.disposition is Disposition.DELIVERED
    assert server.connections == 1


async def test_refused_mail_from_reads_every_reply_and_keeps_the_session(
    servers: Callable[..., SinkServer], make_transport: Callable[..., Transport]
) -> None:
    behaviour = Behaviour(mail_reply="553 5.7.1 <sender@postwire.test>: Sender address rejected")
    server = servers(behaviour)
    transport = make_transport(server.host, server.port)
    deliveries = await send_many(transport, RCPTS)
    assert {d.outcome.stage for d in deliveries} == {Stage.MAIL}
    assert {d.outcome.category for d in deliveries} == {Category.SENDER_REJECTED}
    assert {d.outcome.disposition for d in deliveries} == {Disposition.BOUNCED}
    assert server.count("data") == 0
    behaviour.mail_reply = None
    # the 503s to the RCPTs and DATA were all read: the next transaction pairs its replies right
    again = await send_many(transport, RCPTS[:1])
    assert again[0].outcome.disposition is Disposition.DELIVERED
    assert server.connections == 1
    assert server.count("rset") == 1


async def test_connection_dropped_mid_pipeline_defers_and_discards_the_session(
    servers: Callable[..., SinkServer], make_transport: Callable[..., Transport]
) -> None:
    behaviour = Behaviour(drop_after_mail=True)
    server = servers(behaviour)
    transport = make_transport(server.host, server.port)
    deliveries = await send_many(transport, RCPTS)
    for delivery in deliveries:
        outcome = delivery.outcome
        assert outcome.disposition is Disposition.DEFERRED
        assert (outcome.stage, outcome.category) == (Stage.RCPT, Category.CONNECTION)
    assert transport.pool.idle(f"{server.host}:{server.port}") == 0
    behaviour.drop_after_mail = False
    again = await send_many(transport, RCPTS[:1])
    assert again[0].outcome.disposition is Disposition.DELIVERED
    assert server.connections == 2
    assert len(server.received) == 1


# --- a scripted server: replies aiosmtpd does not give ------------------------------------------


class Scripted:
    """Greets, answers EHLO with PIPELINING, then answers each complete client write with the
    next reply block of ``script`` (sent ``split`` bytes at a time when set); records the bytes."""

    def __init__(self, script: list[bytes], split: int = 0, chunking: bool = False) -> None:
        self.script = list(script)
        self.split = split
        self.extensions = b"250-CHUNKING\r\n" if chunking else b""
        self.seen = bytearray()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        try:
            line = await reader.readline()
            assert line.upper().startswith(b"EHLO")
            ehlo = b"250-scripted\r\n250-PIPELINING\r\n" + self.extensions + b"250 8BITMIME\r\n"
            writer.write(ehlo)
            for block in self.script:
                data = await reader.read(65536)
                if not data:
                    return
                self.seen += data
                step = self.split or len(block)
                for i in range(0, len(block), step):
                    writer.write(block[i : i + step])
                    await writer.drain()
                    if self.split:
                        await asyncio.sleep(0.01)
            while data := await reader.read(65536):  # RSET, QUIT and whatever else comes
                self.seen += data
                if b"QUIT" in data:
                    writer.write(b"221 bye\r\n")
                elif b"RSET" in data:
                    writer.write(b"250 reset\r\n")
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Any]]:
    made: list[Scripted] = []

    async def start(script: list[bytes], split: int = 0, chunking: bool = False) -> Scripted:
        server = await Scripted(script, split, chunking).start()
        made.append(server)
        return server

    yield start
    for server in made:
        await server.stop()


async def test_354_without_a_valid_recipient_gets_a_lone_dot_and_no_content(
    scripted: Callable[..., Any], make_transport: Callable[..., Transport]
) -> None:
    server = await scripted(
        [
            b"250 ok\r\n550 5.1.1 no such user\r\n354 go ahead anyway\r\n",
            b"554 5.5.1 no valid recipients\r\n",
        ]
    )
    transport = make_transport("127.0.0.1", server.port)
    [delivery] = await send_many(transport, RCPTS[:1])
    assert (delivery.outcome.disposition, delivery.outcome.stage) == (
        Disposition.BOUNCED,
        Stage.RCPT,
    )
    assert b"line\r\n" not in server.seen  # the content never went out
    assert b"DATA\r\n.\r\n" in server.seen


async def test_replies_cut_into_tiny_packets_are_paired_right(
    scripted: Callable[..., Any], make_transport: Callable[..., Transport]
) -> None:
    server = await scripted(
        [
            b"250 ok\r\n250-2.1.5 ok\r\n250 2.1.5 really\r\n452 4.5.3 too many\r\n354 go\r\n",
            b"250 2.0.0 queued as X\r\n",
        ],
        split=3,
    )
    transport = make_transport("127.0.0.1", server.port)
    first, second = await send_many(transport, RCPTS[:2])
    assert first.outcome.disposition is Disposition.DELIVERED
    assert "queued as X" in first.outcome.text
    assert (second.outcome.disposition, second.outcome.category) == (
        Disposition.DEFERRED,
        Category.RATE_LIMITED,
    )


async def test_a_reply_nobody_asked_for_discards_the_session(
    scripted: Callable[..., Any], make_transport: Callable[..., Transport]
) -> None:
    server = await scripted(
        [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 2.0.0 queued\r\n250 2.0.0 and again?\r\n"]
    )
    transport = make_transport("127.0.0.1", server.port)
    [delivery] = await send_many(transport, RCPTS[:1])
    assert delivery.outcome.disposition is Disposition.DELIVERED
    # an extra reply would be mis-paired with the next command: the session is not kept (the
    # pool took it back before send_many returned)
    assert transport.pool.idle(f"127.0.0.1:{server.port}") == 0


async def test_chunking_sends_envelope_and_message_in_one_write(
    scripted: Callable[..., Any], make_transport: Callable[..., Transport]
) -> None:
    server = await scripted(
        [b"250 ok\r\n250 ok\r\n250 ok\r\n250 2.0.0 queued as B\r\n"], chunking=True
    )
    transport = make_transport("127.0.0.1", server.port)
    deliveries = await send_many(transport, RCPTS[:2])
    assert [d.outcome.disposition for d in deliveries] == [Disposition.DELIVERED] * 2
    assert "queued as B" in deliveries[0].outcome.text
    # one read held it all: the envelope, the chunk's size and the message, not dot-stuffed
    chunk = b"BDAT %d LAST\r\n" % len(MESSAGE) + MESSAGE
    envelope = (
        b"MAIL FROM:<sender@postwire.test>\r\nRCPT TO:<a@dest.test>\r\nRCPT TO:<b@dest.test>\r\n"
    )
    assert bytes(server.seen) == envelope + chunk


async def test_chunking_can_be_turned_off(
    scripted: Callable[..., Any], make_transport: Callable[..., Transport]
) -> None:
    server = await scripted(
        [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 2.0.0 queued\r\n"], chunking=True
    )
    transport = make_transport("127.0.0.1", server.port, chunking=False)
    [delivery] = await send_many(transport, RCPTS[:1])
    assert delivery.outcome.disposition is Disposition.DELIVERED
    assert b"BDAT" not in server.seen
    assert b"\r\n..dot line\r\n.\r\n" in server.seen  # DATA, dot-stuffed


# --- uvloop: the worker processes' event loop ---------------------------------------------------


@pytest.mark.parametrize("tls", [False, True])
def test_pipelining_over_uvloop_transports(tls: bool, tmp_path: Any) -> None:
    # uvloop's transports are no asyncio.Transport subclasses; the Wire must sit on them too
    uvloop = pytest.importorskip("uvloop")
    host = next(_next_host)
    files = make_tls(tmp_path, [host])
    server = SinkServer(host, tls=files.server_context() if tls else None).start()
    try:
        config = TransportConfig(
            mode="relay",
            relay_host=server.host,
            relay_port=server.port,
            tls="required" if tls else "none",
            ca_file=str(files.ca),
            connect_timeout=5.0,
            command_timeout=5.0,
            data_timeout=5.0,
        )

        async def run() -> tuple[Delivery, ...]:
            transport = Transport(config, throttle(), None)
            try:
                first = await send_many(transport, RCPTS)
                second = await send_many(transport, RCPTS[:1])  # the same session again
                return first + second
            finally:
                await transport.close()

        loop = uvloop.new_event_loop()
        try:
            deliveries = loop.run_until_complete(run())
        finally:
            loop.close()
    finally:
        server.stop()
    assert [d.outcome.disposition for d in deliveries] == [Disposition.DELIVERED] * 4
    assert {d.tls for d in deliveries} == {tls}
    assert envelope_in_one_read(server)
    assert server.connections == 1
