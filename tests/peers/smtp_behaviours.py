"""aiosmtpd servers with the behaviours the delivery transport must cope with (temporary
failures, refused recipients, dropped and stalled sessions, STARTTLS, AUTH), each counting its
sessions so a test can see what the connection pool did to the server."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from streams.stack.tls import issue_server_cert, make_ca
from tests.peers.smtp_servers import free_port_on

__all__ = [
    "Behaviour",
    "GreetingServer",
    "Received",
    "SinkServer",
    "TlsFiles",
    "make_tls",
]


@dataclass
class Behaviour:
    # fixed RCPT replies per address (lower case); everyone else is accepted
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    defer_first: int = 0  # answer 451 to this many RCPTs first, then accept
    drop_in_data: bool = False  # close the session once the message is in, with no reply
    data_delay: float = 0.0  # wait this long before the reply to the final "."
    data_reply: str = "250 2.0.0 Ok: queued as Q{n}"
    # answer MAIL with 421 on a session quiet this long since its last message: a server whose
    # idle timeout fires just as the client reuses the session
    mail_421_after_idle: float | None = None
    pipelining: bool = True  # offer RFC 2920 PIPELINING in the EHLO reply, as real MTAs do
    mail_reply: str | None = None  # a fixed reply to every MAIL FROM
    drop_after_mail: bool = False  # answer MAIL, then close the session with no more replies


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool
    smtputf8: bool


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0  # sessions ever opened
        self.open = 0
        self.max_open = 0
        self.counts: dict[str, int] = {}
        self.received: list[Received] = []
        self.reads: list[bytes] = []  # the bytes of each read from a client, in order

    def bump(self, key: str) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def reset(self) -> None:
        with self.lock:
            self.connections = self.open = self.max_open = 0
            self.counts.clear()
            self.received.clear()
            self.reads.clear()


class _CountingSMTP(SMTP):
    """Counts a session as open from its first byte to its QUIT (before the 221, so a client
    that waits for the 221 before opening the next one is never seen over its limit) or loss."""

    def __init__(self, stats: _Stats, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stats = stats
        self._counted = False
        self._ended = False

    def _end(self) -> None:
        with self._stats.lock:
            if self._counted and not self._ended:
                self._ended = True
                self._stats.open -= 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:  # STARTTLS makes a second call for the TLS transport
            self._counted = True
            with self._stats.lock:
                self._stats.connections += 1
                self._stats.open += 1
                self._stats.max_open = max(self._stats.max_open, self._stats.open)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._end()
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        with self._stats.lock:
            self._stats.reads.append(data)
        super().data_received(data)

    async def smtp_QUIT(self, arg: str) -> None:
        self._end()
        await super().smtp_QUIT(arg)


class _Handler:
    def __init__(self, behaviour: Behaviour, stats: _Stats) -> None:
        self.behaviour = behaviour
        self.stats = stats
        self.deferred = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.behaviour.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.stats.bump("rset")
        return "250 OK"

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.stats.bump("mail")
        idle_limit = self.behaviour.mail_421_after_idle
        last = getattr(session, "last_message", None)
        if idle_limit is not None and last is not None and time.monotonic() - last > idle_limit:
            return "421 4.4.2 Idle too long, closing connection"
        if self.behaviour.drop_after_mail:
            await server.push("250 OK")
            server.transport.close()
            await asyncio.sleep(30)  # cancelled when the session goes
        if self.behaviour.mail_reply is not None:
            return self.behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.stats.bump("rcpt")
        reply = self.behaviour.rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        if self.deferred < self.behaviour.defer_first:
            self.deferred += 1
            return "451 4.3.0 Temporary local problem, try again"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.stats.bump("data")
        if self.behaviour.drop_in_data:
            server.transport.close()
            await asyncio.sleep(30)  # cancelled when the session goes
        if self.behaviour.data_delay:
            await asyncio.sleep(self.behaviour.data_delay)
        received = Received(
            envelope.mail_from,
            tuple(envelope.rcpt_tos),
            bytes(envelope.original_content),
            session.ssl is not None,
            "SMTPUTF8" in (opt.upper() for opt in envelope.mail_options),
        )
        session.last_message = time.monotonic()
        with self.stats.lock:
            self.stats.received.append(received)
            n = len(self.stats.received)
        return self.behaviour.data_reply.format(n=n)


class _Controller(Controller):
    def __init__(self, stats: _Stats, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._stats = stats

    def factory(self) -> SMTP:
        return _CountingSMTP(self._stats, self.handler, **self.SMTP_kwargs)


class SinkServer:
    """An aiosmtpd server on ``host`` (a free port) behaving as ``behaviour``.

    ``tls``: a server context to offer STARTTLS with (``require_starttls`` refuses mail without
    it); ``auth``: the one (username, password) accepted, with AUTH then required."""

    def __init__(
        self,
        host: str,
        behaviour: Behaviour | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        auth: tuple[str, str] | None = None,
        auth_require_tls: bool = True,
        smtputf8: bool = True,
        port: int | None = None,
        session_timeout: float = 300,
    ) -> None:
        self.host = host
        self.port = port or free_port_on(host)
        self.behaviour = behaviour or Behaviour()
        self._stats = _Stats()
        kwargs: dict[str, Any] = {
            "hostname": host,
            "port": self.port,
            "server_hostname": f"sink.{host}",
            "ready_timeout": 10,
            "enable_SMTPUTF8": smtputf8,
            "decode_data": False,
            "timeout": session_timeout,  # the server drops a session idle this long
        }
        if tls is not None:
            kwargs.update(tls_context=tls, require_starttls=require_starttls)
        if auth is not None:
            kwargs.update(
                auth_required=True,
                auth_require_tls=auth_require_tls,
                authenticator=self._authenticator(auth),
            )
        self.controller = _Controller(self._stats, _Handler(self.behaviour, self._stats), **kwargs)

    def _authenticator(self, accepted: tuple[str, str]) -> Any:
        def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            ok = (
                isinstance(data, LoginPassword)
                and (
                    data.login.decode(),
                    data.password.decode(),
                )
                == accepted
            )
            self._stats.bump("auth_ok" if ok else "auth_failed")
            return AuthResult(success=ok, handled=False)

        return check

    def start(self) -> SinkServer:
        self.controller.start()
        # the controller's own start-up probe is a session too: wait for it to end, then forget it
        deadline = time.monotonic() + 5
        while self.open and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stats.reset()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def connections(self) -> int:
        with self._stats.lock:
            return self._stats.connections

    @property
    def open(self) -> int:
        with self._stats.lock:
            return self._stats.open

    @property
    def max_open(self) -> int:
        with self._stats.lock:
            return self._stats.max_open

    def count(self, key: str) -> int:
        with self._stats.lock:
            return self._stats.counts.get(key, 0)

    @property
    def reads(self) -> list[bytes]:
        with self._stats.lock:
            return list(self._stats.reads)

    @property
    def received(self) -> list[Received]:
        with self._stats.lock:
            return list(self._stats.received)


class GreetingServer:
    """Answers every connection with one fixed line (a 4xx greeting) and hangs up."""

    def __init__(
        self,
        host: str,
        greeting: str = "421 4.3.2 Too busy, come back later",
        port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port_on(host)
        self.greeting = greeting
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(self.greeting.encode() + b"\r\n")
        await writer.drain()
        writer.close()

    def start(self) -> GreetingServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._on_connect, self.host, self.port), self._loop
        )
        self._server = future.result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # what a client trusts
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_tls(directory: Path, names: list[str]) -> TlsFiles:
    """A throwaway CA and a server certificate it signed for ``names`` (host names or IPs):
    the embedded broker's own certificate helpers (streams/stack/tls.py)."""
    ca = make_ca("postwire test CA")
    server = issue_server_cert(ca, names)
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    files.ca.write_bytes(ca.cert_pem())
    files.cert.write_bytes(server.cert_pem())
    files.key.write_bytes(server.key_pem())
    return files
