"""Deliver stage (faust shell): DeliveryTask in, SMTP out, DeliveryEvent and retries out.

Agents:
- one per lane (``deliveries.tx`` for critical/high, ``deliveries`` for normal/bulk), each with
  its own consumers and concurrency, so a bulk backlog never delays transactional mail;
- one per delay tier (``retry.5m`` ...): sleeps on the head record until it is due (or flushed),
  then puts it back on its lane;
- one on the control topic, doing what a release or delete does to the parked tasks.

The ledger table (task id -> accepted) is the no-double-send guard: a task whose 250 was recorded
is never sent again, even when a crash makes Kafka deliver it twice. Its changelog is flushed
before the offsets are committed, so what remains is the RFC 1047 window: the receiver accepted
the message but the worker died before the ledger record reached Kafka. That task is sent again.
"""

from __future__ import annotations

import base64
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from streams.codec import Codec, Record
from streams.deadletter import SourcePosition, rejection
from streams.deliver.control import Command
from streams.deliver.core import Conclusion, failed, flush_now, lane_of, task_meta, triage
from streams.deliver.dkim import Signer, load_keys
from streams.deliver.mime import StoredTemplate
from streams.deliver.queue import ControlFeed, index_entry, read_compacted, task_meta_of_entry
from streams.deliver.retry import delay_tier, tier_name, tier_topic
from streams.deliver.service import Deliverer
from streams.deliver.throttle import Throttle
from streams.deliver.transport import Transport, TransportConfig
from streams.errors import CodecError, DkimError, RenderError, StageCrashError
from streams.events import make_event, make_suppression
from streams.obs.metrics import EndToEnd, StageMeter
from streams.settings import Settings
from streams.stages.shell import Clock, DirectoryHolder, Outputs, header, raw_topic
from streams.verify.dns import MxResolver

__all__ = ["STAGE", "build_deliverer", "register"]

STAGE = "deliver"
log = logging.getLogger("postwire.deliver")
RELEASED = "postwire-released-at"
ENQUEUED = "postwire-enqueued-at"
LOCAL_SUPPRESSION_TTL = 120.0  # until the sink and the directory refresh know it everywhere
# what became of a task that was not sent, for postwire_records_total{outcome}
_NOT_SENT = {
    "drop": "dropped",
    "hold": "held",
    "skip": "skipped",
    "wait": "waiting",
    "expire": "expired",
}


def transport_config(settings: Settings) -> TransportConfig:
    return TransportConfig(
        mode=settings.delivery_mode,
        relay_host=settings.relay_host,
        relay_port=settings.relay_port,
        username=settings.relay_username,
        password=(settings.relay_password.get_secret_value() if settings.relay_password else None),
        tls=settings.smtp_tls,
        tls_verify=(
            settings.smtp_tls_verify
            if settings.smtp_tls_verify is not None
            else settings.smtp_tls == "required"
        ),
        ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
        mx_port=settings.smtp_port,
        helo_name=settings.smtp_helo,
        connect_timeout=settings.smtp_connect_timeout,
        command_timeout=settings.smtp_command_timeout,
        data_timeout=settings.smtp_data_timeout,
        max_messages_per_connection=settings.smtp_max_messages_per_connection,
        idle_timeout=settings.smtp_idle_timeout,
    )


def load_signer(directory: Path) -> Signer:
    return Signer(load_keys(directory) if directory.is_dir() else {})


def build_deliverer(settings: Settings, clock: Clock, templates: Any = None) -> Deliverer:
    throttle = Throttle(settings.destination_limits)
    resolver = MxResolver(settings.nameservers, settings.dns_timeout, settings.dns_tries)
    relay = settings.delivery_mode == "relay"
    return Deliverer(
        Transport(transport_config(settings), throttle, None if relay else resolver),
        load_signer(settings.dkim_dir),
        throttle,
        settings.retry_policy,
        breaker_policy=settings.breaker_policy,
        destination=(lambda _domain: settings.relay_host) if relay else (lambda d: d),
        throttle_max_wait=settings.throttle_max_wait,
        templates=templates,
        clock=clock,
    )


LEDGER_WINDOW = 86400.0


class Ledger:
    """Task ids whose message a receiver accepted, in day windows."""

    def __init__(self, table: Any, days: int) -> None:
        self.table = table
        self.days = days

    def get(self, task_id: str) -> Any:
        found = self.table[task_id]
        for day in range(self.days):
            try:
                value = found.delta(day * LEDGER_WINDOW)
            except KeyError:  # a windowed table has no default: missing keys raise
                continue
            if value is not None:
                return value
        return None

    def __setitem__(self, task_id: str, value: Any) -> None:
        self.table[task_id] = value


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


class DeliverShell:
    """What the agents share: outputs, the ledger, the control feed, local suppressions."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        outputs: Outputs,
        directory: DirectoryHolder,
        clock: Clock,
        ledger: Any,
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
        self.policy = settings.retry_policy
        prefix = settings.topics.prefix
        self.tiers = {s: tier_topic(prefix, tier_name(s)) for s in self.policy.tiers}
        self.tier_outputs: dict[str, Any] = {}
        self._local_suppressed: dict[tuple[str, str], float] = {}
        self._inflight: set[str] = set()
        self._delivered = EndToEnd("delivered")

    def suppressed(self, tenant: str, address: str) -> bool:
        key = (tenant, address.lower())
        at = self._local_suppressed.get(key)
        if at is not None and time.monotonic() - at < LOCAL_SUPPRESSION_TTL:
            return True
        return self.directory.current.is_suppressed(tenant, address)

    async def suppress(self, task: Record, reason: str, detail: str | None) -> None:
        tenant, address = task["tenant"], task["recipient"]["email"].lower()
        self._local_suppressed[(tenant, address)] = time.monotonic()
        # rare and worth an operator's eye; the address is hashed by the log handler
        log.info("suppressing %s for tenant %s (%s): %s", address, tenant, reason, detail)
        record = make_suppression(tenant, address, reason, "deliver", self.clock(), detail)
        await self.outputs.suppressions.send(
            key=f"{tenant}\x1f{address}".encode(), value=self.codec.encode("Suppression", record)
        )

    async def to_delay(self, task: Record, until: datetime, now: datetime) -> None:
        """Park ``task`` in the delay tier that fits the wait; the tier agent brings it back."""
        wait = max((until - now).total_seconds(), 0.001)
        _, seconds = delay_tier(self.policy, wait)
        await self.tier_outputs[self.tiers[seconds]].send(
            key=task["domain"].encode(),
            value=self.codec.encode("DeliveryTask", task),
            headers={ENQUEUED: str(_ms(now)).encode()},
        )

    async def index(self, task: Record, value: bytes | None) -> None:
        await self.outputs.queue.send(key=task["task_id"].encode(), value=value)

    async def handle(
        self, raw: bytes | None, key: bytes | None, position: SourcePosition, headers: Any
    ) -> str:
        """Deal with one task; return what became of it (an event type or a step name)."""
        now = self.clock()
        try:
            _, task = self.codec.decode(raw or b"", expected="DeliveryTask")
        except CodecError as exc:
            await self.outputs.rejection(rejection(position, STAGE, exc, key, raw or b"", now))
            return "undecodable"
        tid = task["task_id"]
        if tid in self._inflight:
            return "in_flight"  # the same task twice at once (a redelivery racing a release)
        self._inflight.add(tid)
        try:
            return await self._handle(task, raw or b"", position, headers, now)
        except Exception as exc:  # a crashed faust agent would drop the record
            log.exception("deliver: unexpected failure on %s:%d:%d", *position.__dict__.values())
            crash = StageCrashError(f"{type(exc).__name__}: {exc}")
            await self.outputs.rejection(
                rejection(position, STAGE, crash, key, raw or b"", now, task["tenant"])
            )
            return "crashed"
        finally:
            self._inflight.discard(tid)

    async def _handle(
        self, task: Record, raw: bytes, position: SourcePosition, headers: Any, now: datetime
    ) -> str:
        released = int(header(headers, RELEASED) or b"0")
        queued = task["attempt"] > 0 or released > 0
        step = triage(
            task,
            now,
            verdict=self.control.state.verdict(task_meta(task, released)),
            already_sent=self.ledger.get(task["task_id"]) is not None,
            suppressed=self.suppressed(task["tenant"], task["recipient"]["email"]),
            policy=self.policy,
        )
        lane = lane_of(task["priority"])
        if step.step == "send":
            return await self._send(task, raw, position, lane, queued)
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
        self, task: Record, raw: bytes, position: SourcePosition, lane: str, queued: bool
    ) -> str:
        try:
            result: Conclusion = await self.deliverer.attempt(task)
        except (RenderError, DkimError) as exc:
            now = self.clock()
            await self.outputs.rejection(
                rejection(position, STAGE, exc, task["domain"].encode(), raw, now, task["tenant"])
            )
            await self.outputs.event(failed(task, now, f"{exc.code}: {exc}"))
            if queued:
                await self.index(task, None)
            return "failed"
        if result.delivered:
            # before the event: the ledger is what stops a second send
            self.ledger[task["task_id"]] = {"at": result.event["occurred_at"].timestamp()}
            self._delivered.since(task["created_at"], result.event["occurred_at"])
        await self.outputs.event(result.event)
        if result.suppress:
            await self.suppress(
                task, result.event["bounce_class"] or "hard_bounce", result.event["reason"]
            )
        if result.retry is not None:
            now = self.clock()
            until = result.retry["not_before"]
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

    async def delay(self, seconds: int, raw: bytes, key: bytes | None, headers: Any) -> None:
        """Hold the head record of a tier until it is due, then send it back to its lane."""
        try:
            _, task = self.codec.decode(raw, expected="DeliveryTask")
        except CodecError:
            # the lane agent dead-letters it with the reason; waiting on it helps nobody
            await self.outputs.lanes["bulk"].send(key=key, value=raw)
            return
        enqueued = int(header(headers, ENQUEUED) or b"0")
        meta = task_meta(task)
        not_before = task["not_before"] or self.clock()
        due = min(enqueued / 1000 + seconds, not_before.timestamp())
        smallest = self.policy.tiers[0]
        while True:
            now = self.clock().timestamp()
            if self.control.state.flushed(meta, enqueued):
                flushed = flush_now(task)
                if flushed is not None:
                    raw = self.codec.encode("DeliveryTask", flushed)
                    break
            remaining = not_before.timestamp() - now
            if now >= due and remaining > smallest:
                # due in this tier but early for its own time: the tier for what is left
                await self.to_delay(task, not_before, self.clock())
                return
            if now >= due and remaining <= 0:
                break
            target = due if now < due else not_before.timestamp()
            await self.control.wait_changed(max(min(target - now, 60.0), 0.01))
        lane = lane_of(task["priority"])
        await self.outputs.lanes[lane].send(key=key, value=raw)

    async def obey(self, command: Command) -> None:
        """A release re-queues the held tasks it frees; a delete drops queued tasks (the ones in
        delay topics are dropped again, idempotently, when they come due)."""
        if command.action not in ("release", "delete"):
            return
        entries = await read_compacted(self.settings, self.settings.topics.queue)
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


def register(
    app: Any,
    settings: Settings,
    codec: Codec,
    outputs: Outputs,
    directory: DirectoryHolder,
    clock: Clock,
    control: ControlFeed | None = None,
    *,
    lanes: tuple[str, ...] = ("bulk", "tx"),
) -> Any:
    """The lane agents named; with the bulk lane also the delay-topic agents, the queue-command
    agent (mail leaves the delay topics into either lane)."""
    from streams.stages.shell import OutputTopic

    # day windows kept a day longer than a message can live: faust expires old windows itself,
    # with their tombstones in the right changelog partitions
    days = int(settings.retry_max_age // LEDGER_WINDOW) + 2
    ledger = Ledger(
        app.Table(f"{settings.app_id}-sent", default=None, partitions=settings.partitions)
        .tumbling(LEDGER_WINDOW, expires=days * LEDGER_WINDOW)
        .relative_to(lambda _event: clock().timestamp()),
        days,
    )
    control = control or ControlFeed(settings)

    def template(tenant: str, template_id: str) -> StoredTemplate | None:
        found = directory.current.templates.get((tenant, template_id))
        return None if found is None else StoredTemplate(*found)

    shell = DeliverShell(
        settings,
        codec,
        outputs,
        directory,
        clock,
        ledger,
        control,
        build_deliverer(settings, clock, template),
    )
    shell.tier_outputs = {name: OutputTopic(app, name) for name in shell.tiers.values()}
    agents = []

    @app.task
    async def start_control() -> None:
        control.start()

    def lane_agent(lane: str) -> Any:
        meter = StageMeter(f"{STAGE}.{lane}")

        async def deliver(stream: Any) -> None:
            if not control.ready.is_set():
                await control.ready.wait()
            async for event in stream.events():
                started = time.perf_counter()
                msg = event.message
                position = SourcePosition(msg.topic, msg.partition, msg.offset)
                outcome = await shell.handle(event.value, event.key, position, event.headers)
                meter.done(outcome, started)

        return app.agent(
            raw_topic(app, settings.topics.lane(lane)),
            name=f"{settings.app_id}.deliver.{lane}",
            concurrency=settings.deliver_concurrency,
        )(deliver)

    def tier_agent(seconds: int, topic: str) -> Any:
        async def wait(stream: Any) -> None:
            if not control.ready.is_set():
                await control.ready.wait()
            async for event in stream.events():
                await shell.delay(seconds, event.value or b"", event.key, event.headers)

        return app.agent(raw_topic(app, topic), name=f"{settings.app_id}.delay.{seconds}")(wait)

    for lane in lanes:
        agents.append(lane_agent(lane))

    @app.timer(30.0)
    async def housekeeping() -> None:
        shell.deliverer.prune()
        now_ms = int(clock().timestamp() * 1000)
        control.state.prune(now_ms, int((settings.retry_max_age + 86400) * 1000))

    if "bulk" not in lanes:
        return agents
    for seconds, topic in shell.tiers.items():
        agents.append(tier_agent(seconds, topic))

    @app.agent(raw_topic(app, settings.topics.control), name=f"{settings.app_id}.control")
    async def obey(stream: Any) -> None:
        async for event in stream.events():
            try:
                command = Command.decode(event.value or b"")
            except ValueError as exc:
                log.warning("ignoring a control record: %s", exc)
                continue
            await shell.obey(command)

    return [*agents, obey]
