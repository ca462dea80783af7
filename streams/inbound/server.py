"""`postwire inbound`: the SMTP server the bounce domain's MX points at.

At RCPT it takes only ``<token>@<bounce domain>`` with a token this install signed (anything
else: ``550 5.1.1``) whose message and recipient are on record (not yet: ``451 4.3.0``, the
sender tries again later, as a bounce can outrun the sinks by a moment), and the feedback loop
address ``fbl@<bounce domain>``, whose ARF reports are traced by the return path they quote.
At the end of DATA it reads the report (streams/mail/reports.py), decides
(streams/inbound/decide.py) and produces the events, the suppressions or, for anything it cannot
read, a dead letter with the reason, and answers 250 only once Kafka has acknowledged all of
them: a report is never lost, and when Kafka does not take it the sender is told ``451`` and
keeps it. A report delivered twice makes the same event ids and suppression keys, so it changes
nothing the second time. Mail to a List-Unsubscribe mailto (``u<token>@<bounce domain>``,
streams/mail/unsubscribe.py) unsubscribes the recipient the token names, whatever it holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from weakref import WeakKeyDictionary

from aiokafka.errors import KafkaError
from aiosmtpd.smtp import SMTP, Envelope, Session

from streams.api.producer import IngressProducer, Record
from streams.clock import Clock, wall_clock
from streams.contract.build import record_key, rejection
from streams.contract.codec import Codec, default_codec
from streams.contract.records import Rejection
from streams.errors import (
    ConfigError,
    PostwireError,
    ReportError,
    ReturnPathError,
    UnreachableError,
    UnsubscribeTokenError,
)
from streams.inbound.decide import Target, Verdict, decide, unsubscribed
from streams.inbound.resolve import Resolver
from streams.kafka.config import client_options
from streams.kafka.limits import flow_topics
from streams.kafka.metadata import wait_for_cluster
from streams.kafka.records import SourcePosition
from streams.mail import unsubscribe
from streams.mail.reports import FeedbackReport, Report, parse_report
from streams.mail.verp import decode
from streams.obs import tracing
from streams.obs.health import Check, verdict
from streams.obs.health import Verdict as Health
from streams.obs.http import metrics_app, serve
from streams.obs.logs import configure_logging
from streams.obs.metrics import RECORDS
from streams.runtime.eventloop import install_fast_loop, stop_on_signals
from streams.secret import ServerSecret
from streams.settings import InboundSettings, Settings

__all__ = [
    "FEEDBACK_LOCAL_PART",
    "SOURCE_TOPIC",
    "STAGE",
    "InboundHandler",
    "InboundServer",
    "run_inbound",
]

log = logging.getLogger(__name__)

STAGE: Final = "inbound"
SOURCE_TOPIC: Final = "smtp:inbound"  # a dead letter's source: mail, not a topic
KEEP_FOR_HEADERS: Final = 8192  # a dead letter's room for the rest of its record
# fbl@<bounce domain>: the address to register with feedback loops (Yahoo's CFL, Microsoft's
# JMRP) that send their ARF reports to an address of their own, not to the return path; the
# report is traced to its message by the return path it quotes. Tokens start with "b".
FEEDBACK_LOCAL_PART: Final = "fbl"


def _count(outcome: str) -> None:
    RECORDS.labels(STAGE, outcome).inc()


@dataclass
class _Pending:
    """What the RCPTs of one transaction named."""

    targets: list[Target] = field(default_factory=list)
    feedback: bool = False  # the feedback loop address was among them
    unsubscribes: list[Target] = field(default_factory=list)  # List-Unsubscribe mailtos


class _NotOnRecordError(PostwireError):
    """A feedback report names a return path of ours whose message is not on record yet."""

    code = "inbound.not_on_record"
    retriable = True


class InboundHandler:
    """aiosmtpd's handler: the RCPT and DATA hooks."""

    def __init__(
        self,
        settings: InboundSettings,
        secret: ServerSecret,
        resolver: Resolver,
        publish: Publisher,
        clock: Clock = wall_clock,
    ) -> None:
        self.domain = settings.bounce_domain
        self.secret = secret
        self.resolver = resolver
        self.publish = publish
        self.clock = clock
        self._pending: WeakKeyDictionary[Envelope, _Pending] = WeakKeyDictionary()

    def _accept(self, envelope: Envelope, address: str, options: list[str]) -> _Pending:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return self._pending.setdefault(envelope, _Pending())

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        local, at, domain = address.rpartition("@")
        if not at or domain.lower().rstrip(".") != self.domain:
            _count("rcpt_other_domain")
            return f"550 5.1.1 <{address}>: this server takes mail for {self.domain} only"
        if local.lower() == FEEDBACK_LOCAL_PART:
            self._accept(envelope, address, rcpt_options).feedback = True
            return "250 2.1.5 OK"
        if local.lower().startswith(unsubscribe.PREFIX):
            return await self._unsubscribe_rcpt(envelope, address, local, rcpt_options)
        try:
            reference = decode(self.secret, local)
        except ReturnPathError as exc:
            _count("rcpt_bad_token")
            return f"550 5.1.1 <{address}>: {exc}"
        try:
            target = await self.resolver.target(reference)
        except UnreachableError as exc:
            log.warning("cannot resolve a return path: %s", exc)
            _count("rcpt_unresolved")
            return f"451 4.3.0 <{address}>: cannot look the return path up now; try again later"
        if target is None:
            _count("rcpt_unknown")
            return f"451 4.3.0 <{address}>: return path not on record yet; try again later"
        self._accept(envelope, address, rcpt_options).targets.append(target)
        return "250 2.1.5 OK"

    async def _unsubscribe_rcpt(
        self, envelope: Envelope, address: str, local: str, options: list[str]
    ) -> str:
        """RCPT of a List-Unsubscribe mailto (``u<token>``)."""
        try:
            token = unsubscribe.decode(self.secret, local)
        except UnsubscribeTokenError as exc:
            _count("rcpt_bad_token")
            return f"550 5.1.1 <{address}>: {exc}"
        try:
            target = await self.resolver.unsubscriber(token)
        except UnreachableError as exc:
            log.warning("cannot resolve an unsubscribe address: %s", exc)
            _count("rcpt_unresolved")
            return f"451 4.3.0 <{address}>: cannot look the address up now; try again later"
        if target is None:
            _count("rcpt_unknown")
            return f"451 4.3.0 <{address}>: not on record yet; try again later"
        self._accept(envelope, address, options).unsubscribes.append(target)
        return "250 2.1.5 OK"

    async def _traced(self, report: Report) -> Target:
        """The target of a report sent to the feedback loop address: the first return path of
        ours it names. ReportError when it names none; _NotOnRecordError when one is not on
        record yet."""
        if not isinstance(report, FeedbackReport):
            raise ReportError(
                "inbound.feedback_not_arf", "mail to the feedback address is not an ARF report"
            )
        waiting = False
        for path in report.return_paths:
            local, _, domain = path.rpartition("@")
            if domain.rstrip(".") != self.domain:
                continue
            try:
                target = await self.resolver.target(decode(self.secret, local))
            except ReturnPathError:
                continue
            if target is not None:
                return target
            waiting = True
        if waiting:
            raise _NotOnRecordError
        raise ReportError(
            "inbound.feedback_untraced",
            "the feedback report names no return path of this server (Original-Mail-From, the"
            " enclosed message's Return-Path)",
        )

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        pending = self._pending.pop(envelope, _Pending())
        now = self.clock()
        # mail to an unsubscribe address means what it is sent to, whatever it says
        verdicts = [unsubscribed(t, "mailto", now) for t in pending.unsubscribes]
        letters: list[Rejection] = []
        if pending.targets or pending.feedback:
            read = await self._read_report(envelope, pending, now)
            if isinstance(read, str):
                return read
            verdicts.extend(read[0])
            letters = read[1]
            outcome = read[2]
        else:
            outcome = ",".join(sorted({v.outcome for v in verdicts})) or "ignored"
        try:
            await self.publish.send(verdicts, letters)
        except (KafkaError, TimeoutError, PostwireError) as exc:
            log.warning("a report could not be recorded: %s", exc)
            _count("unrecorded")
            return "451 4.3.0 the report could not be recorded; try again later"
        for found in verdicts:
            _count(found.outcome)
        if letters:
            _count("dead_lettered")
        return f"250 2.0.0 OK: {outcome}"

    async def _read_report(
        self, envelope: Envelope, pending: _Pending, now: datetime
    ) -> tuple[list[Verdict], list[Rejection], str] | str:
        """(verdicts, dead letters, outcome) of a report to return paths or the feedback
        address, or the SMTP reply to give now (a 451) when it cannot be read yet."""
        targets = list(pending.targets)
        raw = envelope.original_content or b""
        try:
            report = parse_report(raw)
            if pending.feedback:
                targets.append(await self._traced(report))
        except ReportError as exc:
            return [], self.dead_letters(exc, raw, targets), exc.code
        except UnreachableError as exc:
            log.warning("cannot resolve a feedback report's return path: %s", exc)
            _count("feedback_unresolved")
            return "451 4.3.0 cannot look the return path up now; try again later"
        except _NotOnRecordError:
            _count("feedback_unknown")
            return "451 4.3.0 the reported message is not on record yet; try again later"
        except Exception as exc:  # a parser's surprise is a dead letter, not a 500 to the sender
            log.exception("inbound: reading a report failed")
            error = ReportError("inbound.unreadable", f"{type(exc).__name__}: {exc}")
            return [], self.dead_letters(error, raw, targets), error.code
        verdicts = [decide(report, target, now) for target in targets]
        outcome = ",".join(sorted({v.outcome for v in verdicts})) or "ignored"
        return verdicts, [], outcome

    def dead_letters(
        self, error: ReportError, raw: bytes, targets: Sequence[Target]
    ) -> list[Rejection]:
        """One dead letter per tenant the mail was for. Its offset is a digest of the mail, so
        the same mail delivered twice is one row."""
        now = self.clock()
        room = max(self.publish.room - KEEP_FOR_HEADERS, 1024)
        kept = raw[:room]
        if len(kept) < len(raw):
            error = ReportError(error.code, f"{error} (mail cut to its first {room:,} bytes)")
        letters = []
        tenants: list[str | None] = [*sorted({t.tenant for t in targets})] or [None]
        for tenant in tenants:
            digest = hashlib.blake2b(raw + (tenant or "").encode(), digest_size=8).digest()
            position = SourcePosition(SOURCE_TOPIC, 0, int.from_bytes(digest) >> 1)
            letters.append(rejection(position, STAGE, error, None, kept, now, tenant))
        return letters


class Publisher:
    """Produces a report's records and waits for Kafka's acknowledgement of all of them."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.codec = codec
        self.topics = settings.topics
        options = client_options(settings.kafka)
        self.producer = IngressProducer(
            options,
            flow_topics(settings.topics),
            {**options, "acks": "all", "enable_idempotence": True, "linger_ms": 1},
            timeout=settings.api_produce_timeout,
        )

    @property
    def room(self) -> int:
        """The largest record the flow's topics take."""
        return self.producer.limit.request_bytes

    async def send(self, verdicts: Sequence[Verdict], letters: Sequence[Rejection]) -> None:
        suppressions: list[Record] = []
        events: list[Record] = []
        for found in verdicts:
            for s in found.suppressions:
                key = record_key(s)
                suppressions.append((key, self.codec.encode("Suppression", s), ()))
            for e in found.events:
                events.append((e["tenant"].encode(), self.codec.encode("DeliveryEvent", e), ()))
        rejections: list[Record] = [(None, self.codec.encode("Rejection", r), ()) for r in letters]
        work = [
            self.producer.send_all(topic, records)
            for topic, records in (
                (self.topics.suppressions, suppressions),
                (self.topics.events, events),
                (self.topics.rejections, rejections),
            )
            if records
        ]
        try:
            # at once: a report one of them fails for is sent again, and repeats them all
            await asyncio.gather(*work)
        except (KafkaError, TimeoutError) as exc:
            raise UnreachableError("kafka.unreachable", f"Kafka did not take it: {exc}") from exc


class InboundServer:
    """The SMTP listener, its resolver and producer, and the /healthz, /metrics server."""

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        if not settings.inbound.bounce_domain:
            raise ConfigError("postwire inbound needs POSTWIRE_BOUNCE_DOMAIN (the domain it takes)")
        self.settings = settings
        self.inbound = settings.inbound
        self.resolver = Resolver(settings.dsn, settings.secret)
        self.publisher = Publisher(settings, codec or default_codec())
        self.handler = InboundHandler(self.inbound, settings.secret, self.resolver, self.publisher)
        self._server: asyncio.Server | None = None
        self._web: Any = None

    def _smtp(self) -> SMTP:
        return SMTP(
            self.handler,
            data_size_limit=self.inbound.max_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.inbound.hostname,
            ident="postwire inbound",
        )

    async def start(self) -> None:
        await wait_for_cluster(self.publisher.producer.client, self.settings.kafka.start_wait)
        await self.resolver.start()
        await self.publisher.producer.start()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._smtp, self.inbound.host, self.inbound.port
            )
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                f"cannot listen on {self.inbound.host}:{self.inbound.port}: {exc}"
            ) from exc
        if self.inbound.web_port:
            self._web = await serve(
                metrics_app(self._health), self.inbound.web_host, self.inbound.web_port
            )
        log.info(
            "inbound SMTP for %s on %s:%d",
            self.inbound.bounce_domain,
            self.inbound.host,
            self.inbound.port,
        )

    def readiness(self) -> Health:
        producing, producer = self.publisher.producer.health()
        return verdict(
            [
                Check("smtp", self._server is not None, "not listening"),
                Check("producer", producing, f"kafka producer {producer['state']}", producer),
                Check("database_pool", self.resolver.pool is not None, "database pool down"),
            ]
        )

    def _health(self) -> tuple[bool, dict[str, Any]]:
        found = self.readiness()
        return found.ok, {"reasons": found.reasons, **found.details}

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._web is not None:
            await self._web.cleanup()
            self._web = None
        await self.publisher.producer.stop()
        await self.resolver.stop()


def run_inbound(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM."""
    configure_logging(settings.logs, "inbound")
    tracing.setup(settings.tracing, "inbound")

    async def main() -> None:
        server = InboundServer(settings)
        await server.start()
        stop = stop_on_signals()
        try:
            await stop.wait()
        finally:
            await server.stop()

    install_fast_loop(kafka_tls=settings.kafka.security.tls)
    asyncio.run(main())
