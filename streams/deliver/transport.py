"""SMTP delivery of one message to one recipient: through a relay, or straight to the recipient
domain's MX hosts, over pooled connections (``pool.py``).

``send`` never raises for trouble on the network or at the peer: every aiosmtplib, socket, TLS
and timeout error is turned into an ``Outcome`` here, at the edge, with the stage it happened in,
so the stage above deals in outcomes only.

aiosmtplib opens the session (connect, EHLO, STARTTLS, AUTH) and closes it; the transaction
itself is ``streams/mail/pipeline.py``'s exchange spoken over a ``Wire`` (``streams/mail/wire.py``):
MAIL, every RCPT and DATA in one write when the server offers PIPELINING (RFC 2920), one command
at a time when it does not; with CHUNKING (RFC 3030) the message goes as one BDAT chunk, in the
same write as the envelope when pipelined. Each reply is classified with its own stage (a 5xx to
RCPT is about that recipient, a 5xx to the final "." about the message) and the session stays
usable after a refused recipient.

Sessions are grouped by destination site (``sites.py``): the pool's budget and the site's rate
are the site's, whichever of its MX hosts a session goes to. A session's slot is taken before the
message is paced, so a process sends at the share of the site's rate its slots give it
(``DestinationThrottle.pace``), holding the session while it waits; a wait longer than
``pace_max_wait`` gives the session back and comes back as ``Delivery.retry_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import aiosmtplib

from streams.deliver.sites import relay_site, site_name
from streams.deliver.throttle import DestinationThrottle
from streams.errors import ConfigError
from streams.mail.dns import MxAnswer, MxCache, MxResolver
from streams.mail.pipeline import Exchange, TransactionResult, bdat
from streams.mail.pool import Connection, Pool
from streams.mail.replies import (
    Category,
    Disposition,
    Outcome,
    Stage,
    TransportErrorKind,
    classify,
    transport_error,
)
from streams.mail.wire import Wire

__all__ = [
    "Delivery",
    "Transport",
    "TransportConfig",
    "data_payload",
    "envelope_address",
    "mx_route",
]

MAX_MX_HOSTS = 5  # Postfix's smtp_mx_address_limit: past that, the domain is broken anyway
_SOON = 1.0  # seconds: back as soon as the delay tiers bring it
_STAGES_TO_FALL_BACK = frozenset({Stage.CONNECT, Stage.EHLO, Stage.STARTTLS})
# controls would inject commands, angle brackets would end the path early
_BAD_ADDRESS_CHARS = re.compile(r"[\x00-\x1f\x7f<>]")


@dataclass(frozen=True)
class TransportConfig:
    mode: Literal["relay", "mx"]
    relay_host: str = ""
    relay_port: int = 25
    username: str | None = None
    password: str | None = None
    # opportunistic: STARTTLS when the server offers it, plain text when it does not; a server
    # that offers it and then fails the handshake or the certificate check is deferred, not
    # downgraded (that is what an attacker in the path would arrange). MX deliveries usually
    # want tls_verify off, as Postfix's "may" level: many MX certificates are self-signed or
    # name another host.
    tls: Literal["none", "opportunistic", "required"] = "opportunistic"
    tls_verify: bool = True
    ca_file: str | None = None  # trusted instead of the system CAs
    mx_port: int = 25
    helo_name: str = "postwire.localhost"
    connect_timeout: float = 30
    command_timeout: float = 60
    data_timeout: float = 120  # for the reply to the final ".": the server may scan the message
    max_messages_per_connection: int = 100
    idle_timeout: float = 30
    pool_wait: float = 30  # for a connection slot when the destination is at its limit
    chunking: bool = True  # BDAT (RFC 3030) where offered: no dot-stuffing, one round trip
    # a site's rate is waited out in place up to this long; a longer wait gives the message
    # back (Delivery.retry_after) for the caller to postpone
    pace_max_wait: float = 5.0

    def __post_init__(self) -> None:
        if self.mode == "relay" and not self.relay_host:
            raise ConfigError("transport: relay mode needs a relay_host")
        if (self.username is None) != (self.password is None):
            raise ConfigError("transport: username and password go together")
        if self.max_messages_per_connection < 1:
            raise ConfigError("transport: max_messages_per_connection must be at least 1")
        timeouts = (self.connect_timeout, self.command_timeout, self.data_timeout)
        if min(timeouts) <= 0 or min(self.idle_timeout, self.pool_wait, self.pace_max_wait) < 0:
            raise ConfigError("transport: timeouts must be positive")


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    host: str = ""  # the relay or MX host that answered; "" when none was reached (DNS)
    address: str = ""  # the address connected to
    tls: bool = False  # whether the session was encrypted
    site: str = ""  # the destination site it went to (or would have)
    # set when a limit of ours held the message back (the site's rate longer than pace_max_wait,
    # or no session of the site came free): not sent, try again in that many seconds without
    # spending an attempt (the outcome says why)
    retry_after: float | None = None


def _local(
    disposition: Disposition, category: Category, stage: Stage, enhanced: str, text: str
) -> Outcome:
    """A decision taken here, without a server reply (so no reply code)."""
    return Outcome(disposition, category, stage, None, enhanced, text, False)


def mx_route(answer: MxAnswer, domain: str) -> tuple[str, ...] | Outcome:
    """The hosts to try for ``domain``, best first, or the outcome if there are none."""
    if answer.status in ("ok", "implicit") and answer.hosts:
        return answer.hosts[:MAX_MX_HOSTS]
    if answer.status == "null_mx":
        text = f"{domain} publishes a null MX: it accepts no mail"
        return _local(Disposition.BOUNCED, Category.DOMAIN_NOT_FOUND, Stage.CONNECT, "5.1.10", text)
    if answer.status in ("nxdomain", "no_mail"):
        text = f"{domain}: no such domain"
        if answer.status == "no_mail":
            text = f"{domain} has no MX and no address record"
        return _local(Disposition.BOUNCED, Category.DOMAIN_NOT_FOUND, Stage.CONNECT, "5.1.2", text)
    detail = answer.error or answer.status
    return transport_error(
        TransportErrorKind.DNS, Stage.CONNECT, f"MX lookup of {domain}: {detail}"
    )


def envelope_address(address: str, smtputf8: bool) -> tuple[bytes, bool] | None:
    """``address`` as it goes in MAIL FROM/RCPT TO, and whether it needs SMTPUTF8; None if it
    cannot be sent to this server. A non-ASCII domain with an ASCII local part travels as its
    A-label, which every server understands."""
    if _BAD_ADDRESS_CHARS.search(address):
        return None
    if address.isascii():
        return address.encode("ascii"), False
    local, at, domain = address.rpartition("@")
    if at and local.isascii():
        try:
            return f"{local}@{domain.encode('idna').decode('ascii')}".encode("ascii"), False
        except UnicodeError:
            pass  # not a valid IDN; SMTPUTF8 can still carry it as it is
    if smtputf8:
        return address.encode("utf-8"), True
    return None


def data_payload(message: bytes) -> bytes:
    """``message`` (CRLF line endings) dot-stuffed and terminated for DATA. Line endings are not
    rewritten: that would break a DKIM signature, and the renderer already guarantees CRLF."""
    if message.startswith(b"."):
        message = b"." + message
    if b"\n." in message:
        message = message.replace(b"\n.", b"\n..")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


def _failure(exc: BaseException, stage: Stage) -> Outcome:
    """What an exception from aiosmtplib, the socket or TLS means, in ``stage``."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return classify(exc.code, None, exc.message, stage)
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return transport_error(TransportErrorKind.TLS, stage, text)
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts are TimeoutErrors too
        return transport_error(TransportErrorKind.TIMEOUT, stage, text)
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError):
            return transport_error(TransportErrorKind.TLS, stage, text)
        if isinstance(cause, ConnectionRefusedError):
            return transport_error(TransportErrorKind.REFUSED, stage, text)
        if isinstance(cause, aiosmtplib.SMTPServerDisconnected | ConnectionResetError):
            return transport_error(TransportErrorKind.RESET, stage, text)
        return transport_error(TransportErrorKind.UNREACHABLE, stage, text)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError):
        return transport_error(TransportErrorKind.RESET, stage, text)
    if isinstance(exc, OSError):
        return transport_error(TransportErrorKind.UNREACHABLE, stage, text)
    # a reply-less refusal by the client library: AUTH or STARTTLS not offered, and the like
    category = Category.AUTH_FAILED if stage is Stage.AUTH else Category.PROTOCOL
    return Outcome(Disposition.DEFERRED, category, stage, None, None, text, True)


_PEER_ERRORS = (aiosmtplib.SMTPException, OSError)  # OSError covers ssl and timeouts


def _tls_context(config: TransportConfig) -> ssl.SSLContext | None:
    if config.tls == "none":
        return None
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"transport: cannot load CA file {config.ca_file!r}: {exc}") from exc
    if not config.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _ascii_domain(domain: str) -> str | None:
    name = domain.strip().rstrip(".").lower()
    if name.isascii():
        return name or None
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return None


async def _reset(client: aiosmtplib.SMTP) -> bool:
    """RSET after a refused transaction; whether the session can carry on."""
    if not client.is_connected:
        return False
    try:
        reply = await client.execute_command(b"RSET")
    except _PEER_ERRORS:
        return False
    return reply.code == 250


def _unsendable(address: str, stage: Stage, host: str) -> Outcome:
    """An address this session cannot carry: a decision taken before any command is sent."""
    if address.isascii() or _BAD_ADDRESS_CHARS.search(address):
        category = Category.SENDER_REJECTED if stage is Stage.MAIL else Category.USER_UNKNOWN
        return _local(Disposition.BOUNCED, category, stage, "5.1.3", f"bad address {address!r}")
    text = f"{address!r} needs SMTPUTF8, which {host} does not offer"
    return _local(Disposition.BOUNCED, Category.CONTENT_REJECTED, stage, "5.6.7", text)


def _held_back(
    text: str, host: str, site: str, retry_after: float, count: int
) -> tuple[Delivery, ...]:
    """Deliveries a limit of ours held back: not sent, to try again in ``retry_after`` s."""
    outcome = Outcome(Disposition.DEFERRED, Category.RATE_LIMITED, Stage.CONNECT, text=text)
    return (Delivery(outcome, host, site=site, retry_after=retry_after),) * count


class Transport:
    """``clock``: seconds (the same clock as the caller's tenant buckets: the throttle prunes
    both with one)."""

    def __init__(
        self,
        config: TransportConfig,
        throttle: DestinationThrottle,
        resolver: MxResolver | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.mode == "mx" and resolver is None:
            raise ConfigError("transport: mx mode needs an MX resolver")
        self.config = config
        self.throttle = throttle
        self._clock = clock
        self._tls = _tls_context(config)
        self.pool = Pool(
            throttle.slots,
            max_messages=config.max_messages_per_connection,
            idle_timeout=config.idle_timeout,
            wait=config.pool_wait,
            quit_timeout=min(config.command_timeout, 5.0),
        )
        self._mx = MxCache(resolver) if resolver is not None else None
        self._relay_key = f"{config.relay_host}:{config.relay_port}"
        self._relay_site = relay_site(config.relay_host, config.relay_port)
        self._reaper: asyncio.Task[None] | None = None

    async def site(self, domain: str) -> str:
        """The destination site mail to ``domain`` goes to, through the MX cache: the relay's in
        relay mode; the domain's own name when it has no MX hosts to send to (a site of one)."""
        if self.config.mode == "relay":
            return self._relay_site
        assert self._mx is not None
        name = _ascii_domain(domain)
        if name is None:
            return domain.strip().lower()
        route = mx_route(await self._mx.lookup(name), name)
        return name if isinstance(route, Outcome) else site_name(route)

    async def send(self, domain: str, mail_from: str, rcpt: str, message: bytes) -> Delivery:
        """Deliver ``message`` (CRLF, already signed) from ``mail_from`` to ``rcpt``, whose
        domain is ``domain``. Peer and network trouble come back as the Delivery's outcome."""
        [delivery] = await self.send_many(domain, mail_from, (rcpt,), message)
        return delivery

    async def send_many(
        self, domain: str, mail_from: str, rcpts: Sequence[str], message: bytes
    ) -> tuple[Delivery, ...]:
        """``message`` to every one of ``rcpts`` (all of ``domain``) in one transaction: a
        Delivery per recipient, in their order."""
        if not rcpts:
            return ()
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        config = self.config
        rcpts = tuple(rcpts)
        if config.mode == "relay":
            host, port = config.relay_host, config.relay_port
            return await self._via(
                self._relay_key, host, port, (host,), self._relay_site, mail_from, rcpts, message
            )
        return await self._direct(domain, mail_from, rcpts, message)

    async def _direct(
        self, domain: str, mail_from: str, rcpts: tuple[str, ...], message: bytes
    ) -> tuple[Delivery, ...]:
        assert self._mx is not None
        name = _ascii_domain(domain)
        if name is None:
            text = f"{domain!r} is not a domain name"
            outcome = _local(
                Disposition.BOUNCED, Category.DOMAIN_NOT_FOUND, Stage.CONNECT, "5.1.2", text
            )
            return (Delivery(outcome),) * len(rcpts)
        route = mx_route(await self._mx.lookup(name), name)
        if isinstance(route, Outcome):
            return (Delivery(route, site=name),) * len(rcpts)
        site = site_name(route)
        port = self.config.mx_port
        last: tuple[Delivery, ...] = ()
        for host in route:
            addresses = await self._mx.addresses(host)
            if not addresses:
                text = f"MX host {host} has no address"
                failure = transport_error(TransportErrorKind.DNS, Stage.CONNECT, text)
                last = (Delivery(failure, host, site=site),) * len(rcpts)
                continue
            last = await self._via(
                f"{host}:{port}", host, port, addresses, site, mail_from, rcpts, message
            )
            outcome = last[0].outcome  # a session that failed failed for every recipient
            # the next MX only for a host that is down or refuses sessions, as Postfix does;
            # a reply about the message would be the same everywhere
            if last[0].retry_after is not None or not (
                outcome.disposition is Disposition.DEFERRED
                and outcome.destination_failure
                and outcome.stage in _STAGES_TO_FALL_BACK
            ):
                return last
        assert last
        return last

    async def _via(
        self,
        key: str,
        host: str,
        port: int,
        addresses: Sequence[str],
        site: str,
        mail_from: str,
        rcpts: tuple[str, ...],
        message: bytes,
    ) -> tuple[Delivery, ...]:
        deliveries: tuple[Delivery, ...] = ()
        per_connection = self.throttle.limit(site).messages_per_connection
        paced = False  # a second try on a fresh session (the first was stale) is the same send
        for _ in range(2):
            conn = await self.pool.acquire(key, host, site, per_connection)
            if conn is None:
                wait = self.config.pool_wait
                text = f"connection limit: no session to {host} came free in {wait:g}s"
                # our limit, not the destination's answer: no attempt spent, so mail that other
                # workers' sessions keep waiting does not climb the retry ladder
                return _held_back(text, host, site, _SOON, len(rcpts))
            reused = conn.client is not None
            try:
                held_back = None if paced else await self._pace(site, len(rcpts))
                paced = True
                if held_back is not None:
                    self.pool.release(conn, reusable=True)
                    text = f"throttled: {site} rate, next message in {held_back:.1f}s"
                    return _held_back(text, host, site, held_back, len(rcpts))
                if not conn.slot.held:
                    # the shared budget lost its slots while this waited: no new transaction on
                    # a session nobody vouches for
                    self.pool.release(conn, reusable=False)
                    text = f"connection limit: the slot of {site} was lost, trying again"
                    return _held_back(text, host, site, _SOON, len(rcpts))
                if not reused:
                    failure = await self._open(conn, port, addresses)
                    if failure is not None:
                        self.pool.release(conn, reusable=False)
                        return (Delivery(failure, host, conn.address, site=site),) * len(rcpts)
                outcomes, reusable = await self._transaction(conn, mail_from, rcpts, message)
            except BaseException:
                self.pool.release(conn, reusable=False)  # cancelled mid-session: state unknown
                raise
            deliveries = tuple(Delivery(o, host, conn.address, conn.tls, site) for o in outcomes)
            self.pool.release(conn, reusable=reusable)
            # a server may drop a session we kept idle (its own timeout) without our noticing
            # until the next command: that one goes again on a new session. A refused MAIL
            # (or a session lost before its reply) is the same for every recipient.
            outcome = outcomes[0]
            stale = (
                reused
                and outcome.stage is Stage.MAIL
                and (outcome.code == 421 or outcome.category is Category.CONNECTION)
            )
            if not stale:
                break
        assert deliveries
        return deliveries

    async def _pace(self, site: str, messages: int) -> float | None:
        """Wait for the site's rate with the session held (its slot is what earns this process
        its share); None once the messages may go, or the wait that is too long to wait here."""
        while True:
            wait = self.throttle.pace(site, self._clock(), messages)
            if wait <= 0:
                return None
            if wait > self.config.pace_max_wait:
                return wait
            await asyncio.sleep(wait)

    async def _open(self, conn: Connection, port: int, addresses: Sequence[str]) -> Outcome | None:
        failure: Outcome | None = None
        for address in addresses[:2]:
            failure = await self._session(conn, address, port)
            # another address of the same host only when this one did not even answer
            if failure is None or failure.stage is not Stage.CONNECT or failure.code is not None:
                return failure
        return failure

    async def _session(self, conn: Connection, address: str, port: int) -> Outcome | None:
        config = self.config
        client = aiosmtplib.SMTP(
            hostname=address,
            port=port,
            local_hostname=config.helo_name,
            timeout=config.command_timeout,
            use_tls=False,
            start_tls=False,
            tls_context=self._tls,
        )
        conn.address, conn.tls = address, False
        stage = Stage.CONNECT
        try:
            await client.connect(timeout=config.connect_timeout)
            stage = Stage.EHLO
            await client.ehlo()
            if self._tls is not None and client.supports_extension("starttls"):
                stage = Stage.STARTTLS
                await client.starttls(server_hostname=conn.host, timeout=config.connect_timeout)
                conn.tls = True
                stage = Stage.EHLO
                await client.ehlo()  # RFC 3207: what was said before TLS no longer counts
            elif config.tls == "required":
                with contextlib.suppress(*_PEER_ERRORS):
                    await client.quit()
                client.close()
                text = f"{conn.host} does not offer STARTTLS, and TLS is required"
                return Outcome(
                    Disposition.DEFERRED, Category.TLS, Stage.STARTTLS, None, None, text, True
                )
            if config.username is not None:
                stage = Stage.AUTH
                await client.login(config.username, config.password or "")
        except _PEER_ERRORS as exc:
            client.close()
            return _failure(exc, stage)
        transport = client.transport
        if transport is None or not client.is_connected:
            client.close()
            return transport_error(TransportErrorKind.RESET, stage, "connection lost")
        conn.client = client
        # a uvloop transport is no asyncio.Transport subclass, but it has the same interface
        conn.wire = Wire(cast(asyncio.Transport, transport))
        conn.smtputf8 = client.supports_extension("smtputf8")
        conn.size_limit = client.supports_extension("size")
        conn.pipelining = client.supports_extension("pipelining")
        conn.chunking = config.chunking and client.supports_extension("chunking")
        return None

    async def _transaction(
        self, conn: Connection, mail_from: str, rcpts: Sequence[str], message: bytes
    ) -> tuple[tuple[Outcome, ...], bool]:
        """One MAIL/RCPT/DATA exchange: an outcome per recipient, and whether the session is
        still usable."""
        client, wire = conn.client, conn.wire
        assert client is not None
        assert wire is not None
        conn.sent += 1
        sender = envelope_address(mail_from, conn.smtputf8)
        if sender is None:
            return (_unsendable(mail_from, Stage.MAIL, conn.host),) * len(rcpts), True
        outcomes: list[Outcome | None] = [None] * len(rcpts)
        lines: list[bytes] = []
        sent_to: list[int] = []
        utf8 = sender[1]
        for i, rcpt in enumerate(rcpts):
            recipient = envelope_address(rcpt, conn.smtputf8)
            if recipient is None:
                outcomes[i] = _unsendable(rcpt, Stage.RCPT, conn.host)
                continue
            utf8 = utf8 or recipient[1]
            lines.append(b"RCPT TO:<" + recipient[0] + b">\r\n")
            sent_to.append(i)
        reusable = True
        if lines:
            args = [b"MAIL FROM:<" + sender[0] + b">"]
            if conn.size_limit:
                args.append(b"SIZE=%d" % len(message))
            if utf8:
                args.append(b"SMTPUTF8")
            exchange = Exchange(
                b" ".join(args) + b"\r\n",
                lines,
                bdat(message) if conn.chunking else data_payload(message),
                pipelining=conn.pipelining,
                chunked=conn.chunking,
            )
            result = await self._exchange(wire, exchange)
            for i, outcome in zip(sent_to, result.outcomes, strict=True):
                outcomes[i] = outcome
            reusable = result.reusable
            if result.needs_reset:
                reusable = await _reset(client)
        done = tuple(outcome for outcome in outcomes if outcome is not None)
        assert len(done) == len(rcpts)
        return done, reusable

    async def _exchange(self, wire: Wire, exchange: Exchange) -> TransactionResult:
        """Speak ``exchange`` over ``wire``: its writes out, the replies in, in order. The
        message goes straight on the wire: SMTP.data would rewrite line endings (breaking
        DKIM) and not tell a refused DATA from a refused message."""
        config = self.config
        clean = False
        wire.begin()
        try:
            wire.write(exchange.start())
            while not exchange.done:
                stage = exchange.awaiting
                timeout = (
                    config.data_timeout if stage is Stage.AFTER_DATA else config.command_timeout
                )
                try:
                    reply = await wire.read(timeout)
                except TimeoutError:
                    text = f"no reply to {stage} within {timeout:g}s"
                    exchange.lost(TransportErrorKind.TIMEOUT, text)
                    break
                more = exchange.on_reply(reply)
                if more:
                    wire.write(more)
        except OSError as exc:  # the connection failed under a write or a read
            exchange.lost(TransportErrorKind.RESET, f"{type(exc).__name__}: {exc}")
        finally:
            clean = wire.end()
        result = exchange.result()
        if result.reusable and not clean:
            # the server said more than it was asked: its next reply would be mis-paired
            wire.close()
            return TransactionResult(result.outcomes, False, False)
        return result

    async def _reap(self) -> None:
        interval = min(max(self.config.idle_timeout / 2, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            self.pool.prune()

    def prune(self) -> int:
        """Close the sessions idle past the idle timeout now (the reaper does it periodically)."""
        return self.pool.prune()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        await self.pool.close()
