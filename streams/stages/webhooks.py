"""Event webhook stages on the batch runtime: events in, signed SendGrid-shaped posts out.

- ``webhooks.batch`` (its own consumer group on ``postwire.events``): keeps the events each
  tenant's endpoint asked for, maps them to SendGrid's JSON and groups them into posts bounded in
  events and bytes, onto ``postwire.webhooks`` (key = tenant). It waits on nothing but Kafka.
- ``webhooks.post`` (on ``postwire.webhooks``): posts each batch, up to ``webhook_concurrency``
  at once and ``webhook_endpoint_concurrency`` per endpoint, each endpoint behind a breaker of
  its own. Records run concurrently, so a hanging endpoint holds only its own posts; a batch of
  an endpoint at its concurrency waits for a slot while fewer than that many wait, and is
  parked in a delay tier past that or while the breaker is open, so one endpoint holds at most
  twice its concurrency of the stage's slots. A failed
  post goes to the retry tier that fits its backoff; 24 hours (``webhook_retry_max_age``) after
  the batch was made it is dead-lettered into ``webhook_failures`` with the last reason.
- ``webhooks.delay.<s>``, one per tier (``postwire.webhooks.retry.<tier>``): holds a partition at
  its first batch not yet due, then puts it back on ``postwire.webhooks``.

At-least-once: an event's offset is committed once the batch holding it was produced (and
acknowledged) to ``postwire.webhooks``; a batch's offset once it was accepted, parked in a tier,
or written to ``webhook_failures``. A crash in between posts a batch again, with the same
payload and so the same ``sg_event_id``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import orjson

from streams.contract.build import rejection
from streams.contract.codec import Codec
from streams.contract.records import WebhookBatch
from streams.db.webhooks import EndpointRow, Failure, load_endpoints, record_failure
from streams.deliver.breaker import Breaker, BreakerPolicy, BreakerState
from streams.deliver.retry import Expire, RetryPolicy, delay_tier, next_attempt, tier_name
from streams.errors import CodecError
from streams.kafka.config import TopicNames
from streams.kafka.topics import webhook_tier_topic
from streams.obs.metrics import WEBHOOK_POST_SECONDS, WEBHOOK_POSTS, WEBHOOK_RETRY_BACKLOG
from streams.runtime.deadletter import dead_letter
from streams.runtime.records import Consumed, Out
from streams.runtime.stage import Held, Step
from streams.runtime.state import Store
from streams.secret import ServerSecret
from streams.settings import WebhookSettings
from streams.stages.policies import webhook_breaker_policy, webhook_retry_policy
from streams.webhooks.batching import batch_events
from streams.webhooks.mapping import sendgrid_event, wanted
from streams.webhooks.post import Poster, PostResult
from streams.webhooks.signing import EndpointKey

__all__ = [
    "BatchStage",
    "EndpointBook",
    "EndpointGates",
    "PostStage",
    "WebhookDelayStage",
    "WebhookShell",
    "webhook_stages",
]

STAGE = "webhooks"
ENQUEUED = "postwire-enqueued-at"
log = logging.getLogger("postwire.webhooks")


@dataclass(frozen=True)
class Endpoint:
    row: EndpointRow
    key: EndpointKey | None  # None: the tenant did not ask for signed posts


class EndpointBook:
    """The enabled endpoints with their opened keys, reloaded every ``refresh`` seconds; its
    pool also writes the dead letters."""

    def __init__(self, dsn: str, secret: ServerSecret, refresh: float) -> None:
        self.dsn = dsn
        self.secret = secret
        self.refresh = refresh
        self.ready = asyncio.Event()
        self.current: dict[str, Endpoint] = {}
        self._keys: dict[tuple[str, str], EndpointKey] = {}  # parsed once per public key
        self.pool: asyncpg.Pool[Any] | None = None

    def get(self, tenant: str) -> Endpoint | None:
        return self.current.get(tenant)

    async def load(self) -> None:
        if self.pool is None:
            self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        async with self.pool.acquire() as conn:
            rows = await load_endpoints(conn, self.secret)
        found = {}
        for tenant, row in rows.items():
            key = None
            if row.pem is not None and row.public_key is not None:
                key = self._keys.get((tenant, row.public_key))
                if key is None:
                    try:
                        key = self._keys[(tenant, row.public_key)] = EndpointKey(row.pem)
                    except ValueError as exc:
                        # never posted unsigned when signing was asked for
                        log.warning("webhooks: the signing key of %s is unusable: %s", tenant, exc)
                        continue
            found[tenant] = Endpoint(row, key)
        self.current = found
        self.ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Reload until ``stop``; a database that does not answer keeps the last endpoints."""
        try:
            while not stop.is_set():
                try:
                    await self.load()
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("webhooks: could not reload the endpoints: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.refresh)
        finally:
            if self.pool is not None:
                await self.pool.close()
                self.pool = None

    async def dead_letter(self, batch: WebhookBatch, reason: str, now: datetime) -> None:
        if self.pool is None:
            raise OSError("the webhook stage's database pool is not started")
        failure = Failure(
            batch["tenant"],
            batch["batch_id"],
            batch["events"],
            batch["attempt"],
            reason,
            batch["first_at"],
            now,
            None,
            batch["payload"],
        )
        async with self.pool.acquire() as conn:
            await record_failure(conn, failure)


Admission = Literal["go", "busy", "paused"]


class EndpointGates:
    """Per endpoint (tenant): posts in flight, posts waiting for one of its slots, and a
    breaker. A post waits in place only while its endpoint has fewer than ``per_endpoint``
    waiting (a burst of batches of a healthy endpoint goes out at once); past that it is
    ``busy`` and parked, so one tenant holds at most twice its concurrency of the stage's slots.
    One event loop owns it."""

    def __init__(self, policy: BreakerPolicy, per_endpoint: int) -> None:
        self.policy = policy
        self.per_endpoint = per_endpoint
        self.in_flight: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._breakers: dict[str, Breaker] = {}

    def _breaker(self, tenant: str) -> Breaker:
        found = self._breakers.get(tenant)
        if found is None:
            found = self._breakers[tenant] = Breaker(self.policy)
        return found

    def _slot(self, tenant: str) -> asyncio.Semaphore:
        found = self._slots.get(tenant)
        if found is None:
            found = self._slots[tenant] = asyncio.Semaphore(self.per_endpoint)
        return found

    async def admit(self, tenant: str, now: Callable[[], float]) -> Admission:
        """``go`` holds one of the endpoint's slots (give it back with ``done``)."""
        if self._breaker(tenant).state(now()) is BreakerState.OPEN:
            return "paused"
        slot = self._slot(tenant)
        if slot.locked():
            if self.waiting[tenant] >= self.per_endpoint:
                return "busy"
            self.waiting[tenant] += 1
            try:
                await slot.acquire()
            finally:
                self.waiting[tenant] -= 1
                if self.waiting[tenant] <= 0:
                    del self.waiting[tenant]
        else:
            await slot.acquire()
        # half-open: only one probe; closed: always
        if not self._breaker(tenant).allow(now()):
            slot.release()
            return "paused"
        self.in_flight[tenant] += 1
        return "go"

    def retry_after(self, tenant: str, now: float) -> float:
        return self._breaker(tenant).retry_after(now)

    def done(self, tenant: str, ok: bool, now: float) -> None:
        self.in_flight[tenant] -= 1
        if self.in_flight[tenant] <= 0:
            del self.in_flight[tenant]
        self._slot(tenant).release()
        breaker = self._breaker(tenant)
        if ok:
            breaker.record_success(now)
        else:
            breaker.record_failure(now)

    def prune(self, now: float) -> None:
        for tenant in [t for t, b in self._breakers.items() if b.idle(now)]:
            if tenant not in self.in_flight and tenant not in self.waiting:
                del self._breakers[tenant]
                self._slots.pop(tenant, None)


def _epoch() -> float:
    return datetime.now(UTC).timestamp()


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


class WebhookShell:
    """What the webhook stages share: the endpoints, the poster, the gates, the ladder."""

    def __init__(
        self,
        settings: WebhookSettings,
        topics: TopicNames,
        codec: Codec,
        book: EndpointBook,
        poster: Poster | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.codec = codec
        self.book = book
        self.poster = poster or Poster(
            settings.timeout,
            per_host=settings.endpoint_concurrency,
            allow_private=settings.allow_private,
        )
        self.policy: RetryPolicy = webhook_retry_policy(settings)
        self.gates = EndpointGates(webhook_breaker_policy(settings), settings.endpoint_concurrency)
        self.tiers = {s: webhook_tier_topic(topics.prefix, tier_name(s)) for s in self.policy.tiers}
        self._outcomes = {o: WEBHOOK_POSTS.labels(o) for o in _POST_OUTCOMES}

    def writes(self) -> tuple[str, ...]:
        return (self.topics.webhooks, self.topics.rejections, *self.tiers.values())

    async def run(self, stop: asyncio.Event, _host: Any = None) -> None:
        """The background task of the host: the endpoint reloads, and the poster's close."""
        try:
            await self.book.run(stop)
        finally:
            await self.poster.close()

    async def ready(self) -> None:
        if not self.book.ready.is_set():
            await self.book.ready.wait()

    def park(self, batch: WebhookBatch, until: datetime, now: datetime) -> Out:
        """``batch`` into the delay tier that fits the wait until ``until``."""
        wait = max((until - now).total_seconds(), 0.001)
        _, seconds = delay_tier(self.policy, wait)
        WEBHOOK_RETRY_BACKLOG.inc()
        parked: WebhookBatch = {**batch, "not_before": until}
        return Out(
            self.tiers[seconds],
            batch["tenant"].encode(),
            self.codec.encode("WebhookBatch", parked),
            ((ENQUEUED, str(_ms(now)).encode()),),
        )

    def count(self, outcome: str) -> None:
        self._outcomes[outcome].inc()

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        dead = dead_letter(self.codec, self.topics.rejections, STAGE, record, error, now)
        step = Step(outputs=[dead])
        step.outcomes["crashed"] += 1
        return step


_POST_OUTCOMES = ("accepted", "rejected", "timeout", "refused", "busy", "paused")


class BatchStage:
    """Events into batches per endpoint (see the module's docstring)."""

    name = f"{STAGE}.batch"
    max_batch = 2000
    concurrency = 0
    stores: tuple[Store, ...] = ()

    def __init__(self, shell: WebhookShell) -> None:
        self.shell = shell
        self.inputs: tuple[str, ...] = (shell.topics.events,)
        self.writes: tuple[str, ...] = (shell.topics.webhooks,)

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        await self.shell.ready()
        step = Step()
        book, codec = self.shell.book, self.shell.codec
        items: list[tuple[str, str, bytes]] = []
        for record in batch:
            try:
                event = codec.decode_as(record.value or b"", "DeliveryEvent")
            except CodecError:
                # not ours to dead-letter: the sinks read the same record and do
                step.outcomes["undecodable"] += 1
                continue
            endpoint = book.get(event["tenant"])
            if endpoint is None:
                step.outcomes["no_endpoint"] += 1
                continue
            if not wanted(event, endpoint.row.events):
                step.outcomes["not_selected"] += 1
                continue
            items.append((event["tenant"], event["event_id"], orjson.dumps(sendgrid_event(event))))
            step.outcomes["batched"] += 1
        settings = self.shell.settings
        for found in batch_events(items, settings.batch_events, settings.batch_bytes):
            value: WebhookBatch = {
                "batch_id": found.batch_id,
                "tenant": found.tenant,
                "payload": found.payload,
                "events": len(found.items),
                "attempt": 0,
                "first_at": now,
                "not_before": None,
                "last_error": None,
            }
            step.outputs.append(
                Out(
                    self.shell.topics.webhooks,
                    found.tenant.encode(),
                    codec.encode("WebhookBatch", value),
                )
            )
        return step

    def housekeeping(self, now: datetime) -> None:
        return None

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        return self.shell.crashed(record, error, now)


class PostStage:
    """Each batch posted on its own, concurrently (see the module's docstring)."""

    name = f"{STAGE}.post"
    max_batch = 500
    stores: tuple[Store, ...] = ()

    def __init__(self, shell: WebhookShell) -> None:
        self.shell = shell
        self.inputs: tuple[str, ...] = (shell.topics.webhooks,)
        self.writes: tuple[str, ...] = shell.writes()
        self.concurrency = shell.settings.concurrency

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        await self.shell.ready()
        step = Step()
        for record in batch:
            outcome = await self._one(record, now, step)
            step.outcomes[outcome] += 1
        return step

    async def _one(self, record: Consumed, now: datetime, step: Step) -> str:
        shell = self.shell
        try:
            batch = shell.codec.decode_as(record.value or b"", "WebhookBatch")
        except CodecError as exc:
            dead = rejection(record.position, STAGE, exc, record.key, record.value or b"", now)
            step.outputs.append(
                Out(shell.topics.rejections, dead["key"], shell.codec.encode("Rejection", dead))
            )
            return "undecodable"
        tenant = batch["tenant"]
        endpoint = shell.book.get(tenant)
        if endpoint is None:
            return "disabled"  # switched off (or removed) since the batch was made
        # it may wait here for one of its endpoint's slots: times are taken after
        admission = await shell.gates.admit(tenant, _epoch)
        if admission != "go":
            ts = _epoch()
            shell.count(admission)
            if admission == "busy":
                until = ts + shell.policy.tiers[0]
            else:
                until = ts + max(shell.gates.retry_after(tenant, ts), shell.policy.tiers[0])
            parked = shell.park(
                batch, datetime.fromtimestamp(until, UTC), datetime.fromtimestamp(ts, UTC)
            )
            step.outputs.append(parked)
            return admission
        result = await self._post(endpoint, batch)
        after = datetime.now(UTC)
        shell.gates.done(tenant, result.ok, after.timestamp())
        shell.count(result.outcome)
        WEBHOOK_POST_SECONDS.observe(result.seconds)
        if result.ok:
            return "accepted"
        attempt = batch["attempt"] + 1
        failed: WebhookBatch = {**batch, "attempt": attempt, "last_error": result.reason}
        decided = next_attempt(
            shell.policy, attempt, batch["first_at"].timestamp(), after.timestamp()
        )
        if isinstance(decided, Expire):
            log.warning(
                "webhooks: giving up on batch %s of tenant %s after %d attempts: %s",
                batch["batch_id"],
                tenant,
                attempt,
                result.reason,
            )
            await shell.book.dead_letter(failed, result.reason, after)
            return "dead"
        step.outputs.append(shell.park(failed, datetime.fromtimestamp(decided.at, UTC), after))
        return "retrying"

    async def _post(self, endpoint: Endpoint, batch: WebhookBatch) -> PostResult:
        return await self.shell.poster.post(
            endpoint.row.url, batch["payload"], endpoint.key, int(datetime.now(UTC).timestamp())
        )

    def housekeeping(self, now: datetime) -> None:
        self.shell.gates.prune(now.timestamp())

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        return self.shell.crashed(record, error, now)


class WebhookDelayStage:
    """One webhook delay tier: a partition is held at its first batch not yet due."""

    max_batch = 500
    concurrency = 0
    stores: tuple[Store, ...] = ()

    def __init__(self, shell: WebhookShell, seconds: int, topic: str) -> None:
        self.shell = shell
        self.seconds = seconds
        self.name = f"{STAGE}.delay.{seconds}"
        self.inputs: tuple[str, ...] = (topic,)
        self.writes: tuple[str, ...] = shell.writes()

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        step = Step()
        ts = now.timestamp()
        shell = self.shell
        for record in batch:
            tp = (record.topic, record.partition)
            if tp in step.held:
                continue
            try:
                parked = shell.codec.decode_as(record.value or b"", "WebhookBatch")
            except CodecError:
                # the post stage dead-letters it with the reason; holding it helps nobody
                step.outputs.append(Out(shell.topics.webhooks, record.key, record.value))
                step.outcomes["undecodable"] += 1
                continue
            enqueued = int(record.header(ENQUEUED) or b"0") / 1000
            not_before = (parked["not_before"] or now).timestamp()
            due = min(enqueued + self.seconds, not_before)
            remaining = not_before - ts
            if ts >= due and remaining > shell.policy.tiers[0]:
                WEBHOOK_RETRY_BACKLOG.dec()
                step.outputs.append(shell.park(parked, parked["not_before"] or now, now))
                step.outcomes["moved"] += 1
            elif ts >= due and remaining <= 0:
                WEBHOOK_RETRY_BACKLOG.dec()
                step.outputs.append(Out(shell.topics.webhooks, record.key, record.value))
                step.outcomes["released"] += 1
            else:
                until = due if ts < due else not_before
                # look again when due, and at least every minute (the clock may jump)
                step.held[tp] = Held(record.offset, min(until, ts + 60.0))
        return step

    def housekeeping(self, now: datetime) -> None:
        return None

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        return self.shell.crashed(record, error, now)


def webhook_stages(
    settings: WebhookSettings,
    topics: TopicNames,
    codec: Codec,
    dsn: str,
    secret: ServerSecret,
) -> tuple[WebhookShell, list[BatchStage | PostStage | WebhookDelayStage]]:
    """The shell (whose ``run`` the host runs beside the stages) and the stages."""
    shell = WebhookShell(settings, topics, codec, EndpointBook(dsn, secret, settings.refresh))
    stages: list[BatchStage | PostStage | WebhookDelayStage] = [
        BatchStage(shell),
        PostStage(shell),
    ]
    stages.extend(
        WebhookDelayStage(shell, seconds, topic) for seconds, topic in shell.tiers.items()
    )
    return shell, stages
