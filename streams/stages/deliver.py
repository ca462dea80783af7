"""Deliver stage on the batch runtime: DeliveryTask in, SMTP out, DeliveryEvent and retries out.

Stages:
- one per lane (``deliveries.tx`` for critical/high, ``deliveries`` for normal/bulk), each with
  its own consumer group and records in flight, so a bulk backlog never delays transactional
  mail; the lane reads ahead, triages each batch and queues what is to be sent per (site,
  tenant), where the scheduler hands out send turns fairly (``streams/deliver/schedule.py``);
  a partition is committed up to its oldest record not finished;
- one per delay tier (``retry.5m`` ...): holds its partitions at the first record not yet due (or
  flushed), then puts it back on its lane;
- one on the control topic, doing what a release or delete does to the parked tasks.

The ledger store (task id -> accepted, per lane partition) is the no-double-send guard: a task
whose 250 was recorded is never sent again, even when a crash makes Kafka deliver it twice. Its
changelog is flushed before the offsets are committed, so what remains is the RFC 1047 window:
the receiver accepted the message but the worker died (or lost Kafka) before the ledger record
reached Kafka. That task is sent again: at most the transactions in flight at that moment or
finished and not yet acknowledged, since a send's turn holds its slot in the scheduler until the
runner's flush of its outcome is acknowledged (``LaneStage.flushed``); its site's connection is
free for the next send as soon as its transaction ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.trace import Span

from streams.clock import Clock
from streams.contract.build import lane_of, make_event, make_suppression, rejection, suppression_key
from streams.contract.codec import Codec
from streams.contract.records import Content, DeliveryEvent, DeliveryTask, Rejection
from streams.db.config import DatabaseSettings
from streams.db.directory import DirectoryHolder
from streams.db.slots import PgSlots
from streams.deliver.control import Command
from streams.deliver.core import Conclusion, failed, flush_now, postpone, task_meta, triage
from streams.deliver.dkim import Signer
from streams.deliver.keyring import KeyRing
from streams.deliver.mime import StoredTemplate
from streams.deliver.queue import ControlFeed, index_entry, task_meta_of_entry
from streams.deliver.retry import delay_tier, tier_name, tier_topic
from streams.deliver.schedule import Scheduler
from streams.deliver.service import Deliverer, DeliveryRules
from streams.deliver.shaping import Shaping
from streams.deliver.throttle import DestinationThrottle
from streams.deliver.tracking import Tracker
from streams.deliver.transport import Transport, TransportConfig
from streams.errors import CodecError, DkimError, RenderError, StageCrashError
from streams.kafka.config import TopicNames
from streams.kafka.read import read_compacted
from streams.kafka.records import SourcePosition
from streams.kafka.topics import changelog_topic
from streams.mail.dns import MxResolver
from streams.obs import tracing
from streams.obs.metrics import EndToEnd
from streams.runtime.deadletter import dead_letter
from streams.runtime.records import Consumed, Out, header
from streams.runtime.stage import Held, Step
from streams.runtime.state import Store
from streams.runtime.tables import TableFactory
from streams.secret import ServerSecret
from streams.settings import DeliverySettings, Settings
from streams.stages.dispatch import Dispatcher
from streams.stages.policies import (
    breaker_policy,
    destination_limits,
    retry_policy,
    return_path,
    shaping_rules,
    unsubscribe,
)

__all__ = [
    "STAGE",
    "ControlStage",
    "DelayStage",
    "DeliverShell",
    "LaneStage",
    "build_deliverer",
    "deliver_stages",
    "directory_signer",
]

STAGE = "deliver"
log = logging.getLogger("postwire.deliver")
RELEASED = "postwire-released-at"
ENQUEUED = "postwire-enqueued-at"
CONTENTS_KEPT = 1024  # requests whose content the tasks waiting in memory share
LOCAL_SUPPRESSION_TTL = 120.0  # until the sink and the directory refresh know it everywhere
# what became of a task that was not sent, for postwire_records_total{outcome}
_NOT_SENT = {
    "drop": "dropped",
    "hold": "held",
    "skip": "skipped",
    "wait": "waiting",
    "expire": "expired",
}


def transport_config(delivery: DeliverySettings) -> TransportConfig:
    password = delivery.relay_password
    return TransportConfig(
        mode=delivery.mode,
        relay_host=delivery.relay_host,
        relay_port=delivery.relay_port,
        username=delivery.relay_username,
        password=password.get_secret_value() if password else None,
        tls=delivery.smtp_tls,
        tls_verify=delivery.smtp_tls_verify,
        ca_file=str(delivery.smtp_ca_file) if delivery.smtp_ca_file else None,
        mx_port=delivery.smtp_port,
        helo_name=delivery.smtp_helo,
        connect_timeout=delivery.smtp_connect_timeout,
        command_timeout=delivery.smtp_command_timeout,
        data_timeout=delivery.smtp_data_timeout,
        max_messages_per_connection=delivery.smtp_max_messages_per_connection,
        idle_timeout=delivery.smtp_idle_timeout,
        pace_max_wait=delivery.throttle_max_wait,
    )


def directory_signer(directory: DirectoryHolder) -> Signer:
    """Signs with the sending tenant's own key of the From domain, as the directory holds it."""

    def pem(tenant: str, domain: str) -> tuple[str, bytes] | None:
        key = directory.current.dkim_key(tenant, domain)
        return None if key is None else (key.selector, key.pem)

    return Signer(KeyRing(pem))


def warn_of_key_files(legacy_dir: Path) -> None:
    """Key files of the old shared directory sign nothing any more: say so once at start."""
    found = sorted(legacy_dir.glob("*._domainkey.*.pem")) if legacy_dir.is_dir() else []
    if found:
        log.warning(
            "%d DKIM key file(s) in %s are not used: keys belong to a tenant now; import each"
            " with `postwire dkim import --tenant T FILE`, then delete the files",
            len(found),
            legacy_dir,
        )


def build_deliverer(
    delivery: DeliverySettings,
    clock: Clock,
    signer: Signer,
    templates: Any = None,
    shaping: Shaping | None = None,
    *,
    secret: ServerSecret | None = None,
    shared: tuple[DatabaseSettings, str] | None = None,
    public_url: str | None = None,
) -> Deliverer:
    """The deliverer of ``delivery``; with a bounce domain (and the ``secret`` that signs its
    tokens) MAIL FROM is a VERP return path; with a ``public_url`` (and the secret) requests
    that ask for open and click tracking get their links. ``shared``: the database and
    namespace (the topic prefix) of connection slots shared with every other worker process;
    None keeps the limits in this process."""
    limits = destination_limits(delivery)
    slots = None
    if shared is not None:
        database, namespace = shared
        slots = PgSlots(database.dsn, namespace, lambda site: limits.for_site(site).connections)
    throttle = DestinationThrottle(limits, slots)
    resolver = MxResolver(delivery.nameservers, delivery.dns_timeout, delivery.dns_tries)
    relay = delivery.mode == "relay"
    rules = DeliveryRules(
        retry_policy(delivery),
        breaker_policy(delivery),
        delivery.throttle_max_wait,
        (lambda _domain: delivery.relay_host) if relay else (lambda d: d),
        return_path(delivery, secret),
        unsubscribe(delivery, secret),
        Tracker(secret, public_url) if secret is not None and public_url else None,
    )
    return Deliverer(
        Transport(
            transport_config(delivery),
            throttle,
            None if relay else resolver,
            clock=lambda: clock().timestamp(),
        ),
        signer,
        throttle,
        rules,
        templates=templates,
        clock=clock,
        shaping=shaping if shaping is not None else Shaping(shaping_rules(delivery)),
    )


class Ledger:
    """Task ids whose message a receiver accepted, in a store co-partitioned with the lane (a
    task always comes back to the same lane partition: the key is its domain)."""

    def __init__(self, store: Store, keep: float) -> None:
        self.store = store
        self.keep = keep  # seconds an entry is kept: longer than a task can be retried

    def get(self, partition: int, task_id: str) -> Any:
        return self.store.get(partition, task_id)

    def put(self, partition: int, task_id: str, at: float) -> None:
        self.store.put(partition, task_id, {"at": at})

    def prune(self, now: float) -> None:
        self.store.sweep(lambda _key, value: float(value["at"]) + self.keep <= now)


# the records the current task is producing (each runtime record runs in a task of its own)
_BUCKET: contextvars.ContextVar[list[Out]] = contextvars.ContextVar("postwire_deliver_outputs")
T = TypeVar("T")


async def collected(work: Awaitable[T], headers: Any = None) -> tuple[T, list[Out]]:
    """Run ``work`` and return what it produced through the outputs below; with tracing on,
    in the context of the record whose ``headers`` are given (what it produces stays in the
    record's trace)."""
    bucket: list[Out] = []
    token = _BUCKET.set(bucket)
    try:
        if headers and tracing.enabled():
            with tracing.resumed(headers):
                result = await work
        else:
            result = await work
    finally:
        _BUCKET.reset(token)
    return result, bucket


class _Topic:
    def __init__(self, name: str) -> None:
        self.name = name

    async def send(
        self, *, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes] | None = None
    ) -> None:
        # in the span of the record being worked on: the record goes on in its trace
        pairs = tracing.with_context(tuple(headers.items()) if headers else ())
        _BUCKET.get().append(Out(self.name, key, value, pairs))


class Outputs:
    """The deliver shell's topics: sending collects the record for the runtime to produce."""

    def __init__(self, codec: Codec, topics: TopicNames, tiers: Sequence[str]) -> None:
        self.codec = codec
        self.events = _Topic(topics.events)
        self.rejections = _Topic(topics.rejections)
        self.lanes = {lane: _Topic(topics.lane(lane)) for lane in ("tx", "bulk")}
        self.queue = _Topic(topics.queue)
        self.suppressions = _Topic(topics.suppressions)
        self.shaping = _Topic(topics.shaping)
        self.tiers = {name: _Topic(name) for name in tiers}

    def names(self) -> tuple[str, ...]:
        """Every topic a delivery stage may write."""
        fixed = (
            self.events,
            self.rejections,
            *self.lanes.values(),
            self.queue,
            self.suppressions,
            self.shaping,
        )
        return tuple(t.name for t in (*fixed, *self.tiers.values()))

    async def event(self, record: DeliveryEvent) -> None:
        key = (record["message_id"] or record["request_id"] or record["tenant"]).encode()
        await self.events.send(key=key, value=self.codec.encode("DeliveryEvent", record))

    async def rejection(self, record: Rejection) -> None:
        await self.rejections.send(key=record["key"], value=self.codec.encode("Rejection", record))


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


@dataclass(slots=True)
class Ready:
    """A task triage said to send, with where it came from, waiting for its turn."""

    task: DeliveryTask
    raw: bytes
    key: bytes | None
    position: SourcePosition
    headers: Any
    queued: bool = False  # it came from a delay topic or a release: its queue entry goes


class DeliverShell:
    """What the agents share: outputs, the ledger, the control feed, local suppressions."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        outputs: Outputs,
        directory: DirectoryHolder,
        clock: Clock,
        ledger: Ledger,
        control: ControlFeed,
        deliverer: Deliverer,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.outputs = outputs
        self.directory = directory
        self.clock = clock
        self.ledger = ledger
        self.control = control
        self.deliverer = deliverer
        self.policy = retry_policy(settings.delivery)
        prefix = settings.topics.prefix
        self.tiers = {s: tier_topic(prefix, tier_name(s)) for s in self.policy.tiers}
        self.tier_outputs = outputs.tiers
        self._local_suppressed: dict[tuple[str, str], float] = {}
        self._inflight: set[str] = set()
        self._contents: dict[str, Content] = {}
        self._delivered = EndToEnd("delivered")

    async def control_loaded(self) -> None:
        """Holds and deletes must be known before any task is judged."""
        if not self.control.ready.is_set():
            await self.control.ready.wait()

    def suppressed(self, task: DeliveryTask) -> str | None:
        """Why ``task``'s recipient is not sent to now (see Directory.suppression), or None."""
        tenant, address = task["tenant"], task["recipient"]["email"]
        at = self._local_suppressed.get((tenant, address.lower()))
        if at is not None and time.monotonic() - at < LOCAL_SUPPRESSION_TTL:
            return "suppressed"
        return self.directory.current.suppression(tenant, address, task.get("asm_group_id"))

    async def suppress(self, task: DeliveryTask, reason: str, detail: str | None) -> None:
        tenant, address = task["tenant"], task["recipient"]["email"].lower()
        self._local_suppressed[(tenant, address)] = time.monotonic()
        # rare and worth an operator's eye; the address is hashed by the log handler
        log.info("suppressing %s for tenant %s (%s): %s", address, tenant, reason, detail)
        record = make_suppression(tenant, address, reason, "deliver", self.clock(), detail)
        await self.outputs.suppressions.send(
            key=suppression_key(tenant, address), value=self.codec.encode("Suppression", record)
        )

    async def to_delay(self, task: DeliveryTask, until: datetime, now: datetime) -> None:
        """Park ``task`` in the delay tier that fits the wait; the tier agent brings it back."""
        wait = max((until - now).total_seconds(), 0.001)
        _, seconds = delay_tier(self.policy, wait)
        await self.tier_outputs[self.tiers[seconds]].send(
            key=task["domain"].encode(),
            value=self.codec.encode("DeliveryTask", task),
            headers={ENQUEUED: str(_ms(now)).encode()},
        )

    async def index(self, task: DeliveryTask, value: bytes | None) -> None:
        await self.outputs.queue.send(key=task["task_id"].encode(), value=value)

    async def handle(
        self, raw: bytes | None, key: bytes | None, position: SourcePosition, headers: Any
    ) -> str:
        """Deal with one task now, a throttle waited out in place; return what became of it
        (an event type or a step name). The lane's scheduler uses ``judge`` and ``send``."""
        judged = await self.judge(raw, key, position, headers)
        if isinstance(judged, str):
            return judged
        return await self.send(judged, self.deliverer.attempt)

    async def judge(
        self, raw: bytes | None, key: bytes | None, position: SourcePosition, headers: Any
    ) -> str | Ready:
        """Triage one task: what became of it when it is not to be sent (its outputs are
        collected), or the task ready to be sent when its turn comes."""
        now = self.clock()
        try:
            task = self.codec.decode_as(raw or b"", "DeliveryTask")
        except CodecError as exc:
            await self.outputs.rejection(rejection(position, STAGE, exc, key, raw or b"", now))
            return "undecodable"
        tid = task["task_id"]
        if tid in self._inflight:
            return "in_flight"  # the same task twice at once (a redelivery racing a release)
        try:
            ready = Ready(task, raw or b"", key, position, headers)
            step = await self._triage(ready, now)
        except Exception as exc:  # noqa: BLE001 - dead-lettered with the reason
            return await self._crash(ready, exc, now)
        if step is None:
            self._inflight.add(tid)
            task["content"] = self._shared_content(task)
            return ready
        return step

    def _shared_content(self, task: DeliveryTask) -> Content:
        """One copy of a request's content for all its recipients waiting in memory (a read-
        ahead of 20,000 tasks would otherwise hold 20,000 copies of the same body)."""
        key = task["message_id"]
        found = self._contents.get(key)
        if found is None:
            found = self._contents[key] = task["content"]
            if len(self._contents) > CONTENTS_KEPT:
                self._contents.pop(next(iter(self._contents)))
        return found

    async def send(
        self, ready: Ready, attempt: Callable[[DeliveryTask], Awaitable[Conclusion]]
    ) -> str:
        """Send a task ``judge`` found ready (``attempt`` is the deliverer's: ``send_now`` when
        the scheduler granted the turn); triage again first, since a queue command, the ledger
        or a suppression may have changed while it waited for its turn."""
        task = ready.task
        try:
            now = self.clock()
            step = await self._triage(ready, now)
            if step is not None:
                return step
            where = ready.position
            with tracing.attempt_span(
                STAGE, where.topic, where.partition, where.offset, ready.headers, task["message_id"]
            ) as span:
                return await self._send(ready, attempt, span)
        except Exception as exc:  # noqa: BLE001 - dead-lettered with the reason
            return await self._crash(ready, exc, self.clock())
        finally:
            self._inflight.discard(task["task_id"])

    async def postponed(self, ready: Ready, until: float, reason: str) -> str:
        """The scheduler found ``ready``'s queue stopped past the wait allowed in memory: to a
        delay topic, without spending an attempt."""
        task = ready.task
        try:
            now = self.clock()
            at = datetime.fromtimestamp(until, tz=now.tzinfo)
            with tracing.resumed(ready.headers):
                return await self._concluded(task, postpone(task, at, reason, now), ready.queued)
        finally:
            self._inflight.discard(task["task_id"])

    def given_up(self, ready: Ready) -> None:
        """``ready`` will be read again (its partition is revoked or the stage stops)."""
        self._inflight.discard(ready.task["task_id"])

    async def _crash(self, ready: Ready, exc: Exception, now: datetime) -> str:
        position = ready.position
        log.exception("deliver: unexpected failure on %s:%d:%d", *position.__dict__.values())
        crash = StageCrashError(f"{type(exc).__name__}: {exc}")
        await self.outputs.rejection(
            rejection(position, STAGE, crash, ready.key, ready.raw, now, ready.task["tenant"])
        )
        return "crashed"

    async def _triage(self, ready: Ready, now: datetime) -> str | None:
        """None when ``ready`` is to be sent; else what became of it (outputs collected)."""
        task, raw = ready.task, ready.raw
        released = int(header(ready.headers, RELEASED) or b"0")
        queued = task["attempt"] > 0 or released > 0
        step = triage(
            task,
            now,
            verdict=self.control.state.verdict(task_meta(task, released)),
            already_sent=self.ledger.get(ready.position.partition, task["task_id"]) is not None,
            suppressed=self.suppressed(task),
            policy=self.policy,
        )
        lane = lane_of(task["priority"])
        if step.step == "send":
            ready.queued = queued
            return None
        if step.event is not None:
            await self.outputs.event(step.event)
        if step.step == "wait" and step.until is not None:
            await self.to_delay(task, step.until, now)
        elif step.step == "hold":
            value = index_entry(
                task, "held", lane=lane, reason="held", next_attempt_ms=None, raw=raw
            )
            await self.index(task, value)
        elif queued:
            await self.index(task, None)
        return _NOT_SENT[step.step]

    async def _send(
        self,
        ready: Ready,
        attempt: Callable[[DeliveryTask], Awaitable[Conclusion]],
        span: Span,
    ) -> str:
        task, raw, position = ready.task, ready.raw, ready.position
        tenant = task["tenant"]
        if not self.directory.current.verified_sender(tenant, task["from"]["email"]):
            # verified since this process's last refresh (the gate said so): fetch the tenant's
            # senders and keys now rather than send this one unsigned
            await self.directory.lookup_senders(tenant)
        try:
            result: Conclusion = await attempt(task)
        except (RenderError, DkimError) as exc:
            now = self.clock()
            await self.outputs.rejection(
                rejection(position, STAGE, exc, task["domain"].encode(), raw, now, task["tenant"])
            )
            await self.outputs.event(failed(task, now, f"{exc.code}: {exc}"))
            if ready.queued:
                await self.index(task, None)
            if span.is_recording():
                span.set_attribute("postwire.outcome", "failed")
            return "failed"
        for state in self.deliverer.shaping.take_published():
            # every delivery process reads these and holds the site as this one does
            await self.outputs.shaping.send(key=state.site.encode(), value=state.encode())
        if result.delivered:
            # before the event: the ledger is what stops a second send
            self.ledger.put(
                position.partition, task["task_id"], result.event["occurred_at"].timestamp()
            )
            self._delivered.since(task["created_at"], result.event["occurred_at"])
        if span.is_recording():
            _attempted(span, task, result)
        return await self._concluded(task, result, ready.queued)

    async def _concluded(self, task: DeliveryTask, result: Conclusion, queued: bool) -> str:
        """The event, suppression, retry and queue entry that follow an attempt's conclusion."""
        lane = lane_of(task["priority"])
        await self.outputs.event(result.event)
        if result.suppress:
            await self.suppress(
                task, result.event["bounce_class"] or "hard_bounce", result.event["reason"]
            )
        if result.retry is not None:
            now = self.clock()
            until = result.retry["not_before"] or now  # set by conclude and postpone
            await self.to_delay(result.retry, until, now)
            entry = index_entry(
                result.retry,
                "deferred",
                lane=lane,
                reason=result.event["reason"],
                next_attempt_ms=_ms(until),
            )
            await self.index(result.retry, entry)
        elif queued:
            await self.index(task, None)
        return str(result.event["type"])  # delivered, deferred, bounced

    async def delay(
        self, seconds: int, raw: bytes, key: bytes | None, headers: Any
    ) -> float | None:
        """Route the head record of a tier: back to its lane once due (or flushed), into the
        tier that fits what is left when it is due here but early for its own time. Returns the
        epoch second worth looking again, or None when the record was handled."""
        try:
            task = self.codec.decode_as(raw, "DeliveryTask")
        except CodecError:
            # the lane stage dead-letters it with the reason; waiting on it helps nobody
            await self.outputs.lanes["bulk"].send(key=key, value=raw)
            return None
        enqueued = int(header(headers, ENQUEUED) or b"0")
        meta = task_meta(task)
        not_before = (task["not_before"] or self.clock()).timestamp()
        due = min(enqueued / 1000 + seconds, not_before)
        now = self.clock().timestamp()
        if self.control.state.flushed(meta, enqueued):
            flushed = flush_now(task)
            if flushed is not None:
                await self._back_to_lane(flushed, key, self.codec.encode("DeliveryTask", flushed))
                return None
        remaining = not_before - now
        if now >= due and remaining > self.policy.tiers[0]:
            await self.to_delay(task, task["not_before"] or self.clock(), self.clock())
            return None
        if now >= due and remaining <= 0:
            await self._back_to_lane(task, key, raw)
            return None
        return due if now < due else not_before

    async def _back_to_lane(self, task: DeliveryTask, key: bytes | None, raw: bytes) -> None:
        await self.outputs.lanes[lane_of(task["priority"])].send(key=key, value=raw)

    async def obey(self, command: Command) -> None:
        """A release re-queues the held tasks it frees; a delete drops queued tasks (the ones in
        delay topics are dropped again, idempotently, when they come due)."""
        if command.action not in ("release", "delete"):
            return
        entries = await read_compacted(self.settings.kafka, self.settings.topics.queue)
        now = self.clock()
        for key, entry in entries.items():
            meta = task_meta_of_entry(entry)
            if not command.selector.matches(meta):
                continue
            if command.action == "release" and entry["state"] == "held":
                raw = base64.b64decode(entry["task"])
                await self.outputs.lanes[entry["lane"]].send(
                    key=entry["domain"].encode(),
                    value=raw,
                    headers={RELEASED: str(command.at).encode()},
                )
                await self.outputs.queue.send(key=key, value=None)
            elif command.action == "delete" and meta.created_at < command.at:
                await self.outputs.event(
                    make_event(
                        "dropped",
                        entry["tenant"],
                        now,
                        request_id=entry["message_id"],
                        message_id=entry["message_id"],
                        recipient=entry["recipient"],
                        reason="deleted",
                        attempt=entry["attempt"],
                    )
                )
                await self.outputs.queue.send(key=key, value=None)


def _attempted(span: Span, task: DeliveryTask, result: Conclusion) -> None:
    """What an attempt's span says of it: the reply code, never the reply's text (it may quote
    the address)."""
    event = result.event
    span.set_attribute("postwire.outcome", str(event["type"]))
    span.set_attribute("postwire.attempt", task["attempt"])
    span.set_attribute("postwire.tenant", task["tenant"])
    smtp = event["smtp"]
    if smtp is not None:
        span.set_attribute("postwire.smtp.code", smtp["code"])
        if smtp["enhanced_code"]:
            span.set_attribute("postwire.smtp.enhanced_code", smtp["enhanced_code"])
    if result.retry is not None:
        span.set_attribute("postwire.retry", True)


class LaneStage:
    """One lane's tasks: up to ``read_ahead`` admitted and not finished, waiting in memory for
    a send turn that the scheduler hands out fairly across the tenants of each site, at most
    ``concurrency`` SMTP transactions in flight (``streams/deliver/schedule.py``)."""

    max_batch = 500

    def __init__(
        self, shell: DeliverShell, lane: str, topic: str, concurrency: int, read_ahead: int
    ) -> None:
        self.shell = shell
        self.name = f"{STAGE}.{lane}"
        self.inputs: tuple[str, ...] = (topic,)
        self.writes: tuple[str, ...] = shell.outputs.names()
        self.stores: tuple[Store, ...] = (shell.ledger.store,)
        self.concurrency = concurrency
        self.read_ahead = max(read_ahead, concurrency)
        deliverer = shell.deliverer
        self.scheduler: Scheduler[_Waiting] = Scheduler(concurrency, deliverer.throttle_max_wait)
        self.dispatcher = Dispatcher(
            self.scheduler,
            deliverer.capacity(),
            self._turn,
            self._postpone,
            lambda: shell.clock().timestamp(),
        )
        # sends granted a turn, until the runner says their outcome is acknowledged
        self._granted: set[asyncio.Future[Step]] = set()

    async def admit(self, batch: Sequence[Consumed], now: datetime) -> list[asyncio.Future[Step]]:
        """Triage the batch: what is not to be sent is finished at once, the rest waits for
        its site's turn."""
        await self.shell.control_loaded()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Step]] = []
        for record in batch:
            future: asyncio.Future[Step] = loop.create_future()
            futures.append(future)
            position = SourcePosition(record.topic, record.partition, record.offset)
            judged, outputs = await collected(
                self.shell.judge(record.value, record.key, position, record.headers),
                record.headers,
            )
            if isinstance(judged, str):
                future.set_result(Step(outputs=outputs, outcomes=Counter({judged: 1})))
                continue
            task = judged.task
            site = await self.shell.deliverer.site(task["domain"])
            self.dispatcher.push(site, task["tenant"], _Waiting(judged, future))
        return futures

    def release(self) -> None:
        for waiting in self.dispatcher.release():
            self.shell.given_up(waiting.ready)
            waiting.future.cancel()

    def flushed(self, futures: Sequence[asyncio.Future[Step]]) -> None:
        granted = self._granted
        settled = 0
        for future in futures:
            if future in granted:
                granted.discard(future)
                settled += 1
        self.dispatcher.settled(settled)

    async def _turn(self, waiting: _Waiting) -> None:
        self._granted.add(waiting.future)
        await self._settle(waiting, self.shell.send(waiting.ready, self.shell.deliverer.send_now))

    async def _postpone(self, waiting: _Waiting, until: float) -> None:
        deliverer = self.shell.deliverer
        site = await deliverer.site(waiting.ready.task["domain"])
        reason = deliverer.held_reason(site, self.shell.clock().timestamp())
        await self._settle(waiting, self.shell.postponed(waiting.ready, until, reason))

    @staticmethod
    async def _settle(waiting: _Waiting, work: Awaitable[str]) -> None:
        future = waiting.future
        try:
            outcome, outputs = await collected(work)
        except Exception as exc:  # noqa: BLE001 - the runner dead-letters the record
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(Step(outputs=outputs, outcomes=Counter({outcome: 1})))

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        """The batch one record at a time, each sent now (a replay, a test): no scheduler."""
        await self.shell.control_loaded()
        step = Step()
        for record in batch:
            position = SourcePosition(record.topic, record.partition, record.offset)
            outcome, outputs = await collected(
                self.shell.handle(record.value, record.key, position, record.headers),
                record.headers,
            )
            step.outputs.extend(outputs)
            step.outcomes[outcome] += 1
        return step

    def housekeeping(self, now: datetime) -> None:
        self.shell.deliverer.prune()
        ts = now.timestamp()
        self.shell.ledger.prune(ts)
        self.shell.control.state.prune(
            int(ts * 1000), int((self.shell.settings.retry_max_age + 86400) * 1000)
        )

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        return _crashed(self.shell, record, error, now)


@dataclass(slots=True)
class _Waiting:
    ready: Ready
    future: asyncio.Future[Step]


def _crashed(shell: DeliverShell, record: Consumed, error: Exception, now: datetime) -> Step:
    topic = shell.settings.topics.rejections
    step = Step(outputs=[dead_letter(shell.codec, topic, STAGE, record, error, now)])
    step.outcomes["crashed"] += 1
    return step


class DelayStage:
    """One delay tier: a partition is held at its first record not yet due; a queue command
    (a flush) wakes it early."""

    max_batch = 500
    concurrency = 0
    stores: tuple[Store, ...] = ()

    def __init__(self, shell: DeliverShell, seconds: int, topic: str) -> None:
        self.shell = shell
        self.seconds = seconds
        self.name = f"delay.{seconds}"
        self.inputs: tuple[str, ...] = (topic,)
        self.writes: tuple[str, ...] = shell.outputs.names()

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        await self.shell.control_loaded()
        step = Step()
        for record in batch:
            tp = (record.topic, record.partition)
            if tp in step.held:
                continue
            # back on its lane in its own trace (the tier's batch span links it)
            until, outputs = await collected(
                self.shell.delay(self.seconds, record.value or b"", record.key, record.headers),
                record.headers,
            )
            step.outputs.extend(outputs)
            if until is None:
                step.outcomes["released"] += 1
            else:
                # look again when due, and at least every minute (the clock may jump)
                step.held[tp] = Held(record.offset, min(until, now.timestamp() + 60.0))
        return step

    def housekeeping(self, now: datetime) -> None:
        return None

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        return _crashed(self.shell, record, error, now)


class ControlStage:
    """Queue commands (release, delete) applied to the parked tasks."""

    name = "control"
    max_batch = 100
    concurrency = 0
    stores: tuple[Store, ...] = ()

    def __init__(self, shell: DeliverShell, topic: str) -> None:
        self.shell = shell
        self.inputs: tuple[str, ...] = (topic,)
        self.writes: tuple[str, ...] = shell.outputs.names()

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        step = Step()
        for record in batch:
            try:
                command = Command.decode(record.value or b"")
            except ValueError as exc:
                log.warning("ignoring a control record: %s", exc)
                step.outcomes["ignored"] += 1
                continue
            _, outputs = await collected(self.shell.obey(command))
            step.outputs.extend(outputs)
            step.outcomes[command.action] += 1
        return step

    def housekeeping(self, now: datetime) -> None:
        return None

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        return _crashed(self.shell, record, error, now)


def deliver_stages(
    settings: Settings,
    codec: Codec,
    directory: DirectoryHolder,
    clock: Clock,
    control: ControlFeed,
    lanes: tuple[str, ...],
    tables: TableFactory | None = None,
    shaping: Shaping | None = None,
) -> list[LaneStage | DelayStage | ControlStage]:
    """The lane stages named; with the bulk lane also the delay tiers and the queue commands
    (mail leaves the delay topics into either lane)."""

    def template(tenant: str, template_id: str) -> StoredTemplate | None:
        found = directory.current.templates.get((tenant, template_id))
        return None if found is None else StoredTemplate(*found)

    policy = retry_policy(settings.delivery)
    tiers = {s: tier_topic(settings.topics.prefix, tier_name(s)) for s in policy.tiers}
    outputs = Outputs(codec, settings.topics, list(tiers.values()))
    warn_of_key_files(settings.data_dir / "dkim")
    shared = (
        (settings.database, settings.topics.prefix) if settings.delivery.shared_limits else None
    )
    deliverer = build_deliverer(
        settings.delivery,
        clock,
        directory_signer(directory),
        template,
        shaping,
        secret=settings.secret,
        shared=shared,
        public_url=settings.api.public_url,
    )
    # kept a day longer than a message can live
    keep = settings.retry_max_age + 86400.0
    stages: list[LaneStage | DelayStage | ControlStage] = []
    for lane in lanes:
        store = Store(f"sent-{lane}", changelog_topic(settings.app_id, f"sent-{lane}"), tables)
        shell = DeliverShell(
            settings, codec, outputs, directory, clock, Ledger(store, keep), control, deliverer
        )
        topic = settings.topics.lane(lane)
        stages.append(
            LaneStage(shell, lane, topic, settings.deliver_concurrency, settings.deliver_read_ahead)
        )
    if "bulk" in lanes:
        shell = next(s.shell for s in stages if isinstance(s, LaneStage))
        stages.extend(DelayStage(shell, seconds, topic) for seconds, topic in tiers.items())
        stages.append(ControlStage(shell, settings.topics.control))
    return stages
