"""The gate and the deferral stage on the batch runtime.

The gate keeps one store (``gate``), partitioned like ``requests`` (key = tenant), holding:
- ``r:<tenant>``: the tenant's rate windows ``{second|minute|hour: [window start, count]}``;
- ``d:<tenant>\\x1f<idempotency key>``: a dedup entry ``{request_id, expires}``;
- ``w:<topic>:<partition>``: the last offset decided (the replay watermark);
- ``m:<request id>\\x1f<deferrals>``: the memo of a throttle or deferral decision.

A batch is decided record by record into an overlay and the overlay is applied once, so a
tenant's windows, a partition's watermark and a dedup key cost one changelog record per batch
however many requests touched them."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from opentelemetry.trace import Span

from streams.contract.build import record_key
from streams.contract.codec import Codec
from streams.contract.records import DeliveryEvent, EmailRequest, Rejection
from streams.contract.signing import KEY_ID, carried
from streams.db.directory import DirectoryHolder
from streams.errors import AuthError
from streams.gate.admission import count_admission, window_counts, windows_expired
from streams.gate.core import (
    STAGE,
    Arrival,
    GateResult,
    Reject,
    Seen,
    admit,
    decide,
    replayed_memo,
    unknown_credentials,
    unknown_sender,
)
from streams.gate.trust import Trust
from streams.kafka.config import TopicNames
from streams.kafka.limits import DEFAULT_LIMIT, LimitReader, RecordLimit
from streams.obs import tracing
from streams.runtime.deadletter import dead_letter
from streams.runtime.records import Consumed, Out
from streams.runtime.stage import Held, Step
from streams.runtime.state import Overlay, Store

__all__ = ["DEFERRALS", "NOT_BEFORE", "DeferralStage", "GateOutputs", "GateStage"]

NOT_BEFORE = "postwire-not-before"
DEFERRALS = "postwire-deferrals"


def key_in_record() -> AuthError:
    return AuthError(
        "auth.key_in_record",
        "the record carries its API key in plaintext (EmailRequest v1 api_key), which the gate"
        " no longer reads: produce EmailRequest v3 signed with the key (README 'Trust model'),"
        " and rotate the key, which is now on the requests topic",
    )


class GateOutputs:
    """The records one gate decision becomes (the request is forwarded as it came)."""

    def __init__(self, codec: Codec, topics: TopicNames) -> None:
        self.codec = codec
        self.topics = topics

    def event(self, record: DeliveryEvent) -> Out:
        key = (record["message_id"] or record["request_id"] or record["tenant"]).encode()
        return Out(self.topics.events, key, self.codec.encode("DeliveryEvent", record))

    def rejection(self, record: Rejection) -> Out:
        return Out(self.topics.rejections, record["key"], self.codec.encode("Rejection", record))

    def of(self, record: Consumed, result: GateResult, now: datetime, deferrals: int) -> list[Out]:
        encode, t = self.codec.encode, self.topics
        out = []
        if result.forward:
            out.append(Out(t.accepted, record.key, record.value))
        if result.rejection is not None:
            out.append(self.rejection(result.rejection))
        out.extend(self.event(ev) for ev in result.events)
        out.extend(
            Out(t.verify, domain.encode(), encode("VerifyTask", task))
            for domain, task in result.tasks
        )
        out.extend(
            Out(
                t.suppressions,
                record_key(s),
                encode("Suppression", s),
            )
            for s in result.suppressions
        )
        out.extend(
            Out(t.lane(lane), domain.encode(), encode("DeliveryTask", task))
            for domain, lane, task in result.deliveries
        )
        if result.defer_for is not None:
            not_before = int((now.timestamp() + result.defer_for) * 1000)
            # the signature goes along: the request is verified again when it comes back
            headers = (
                *carried(record.headers),
                (NOT_BEFORE, str(not_before).encode()),
                (DEFERRALS, str(deferrals + 1).encode()),
            )
            out.append(Out(t.deferred, record.key, record.value, headers))
        return out


class GateStage:
    name = STAGE
    max_batch = 2000
    concurrency = 0

    def __init__(
        self,
        codec: Codec,
        topics: TopicNames,
        directory: DirectoryHolder,
        store: Store,
        *,
        trust: Trust,
        dedup_ttl: float,
        limit: RecordLimit = DEFAULT_LIMIT,
        limits: LimitReader | None = None,
    ) -> None:
        self.codec = codec
        self.limits = limits
        self.directory = directory
        self.trust = trust
        self.store = store
        self.stores: tuple[Store, ...] = (store,)
        self.inputs: tuple[str, ...] = (topics.requests,)
        t = topics
        self.writes: tuple[str, ...] = (
            *(t.accepted, t.verify, t.deliveries, t.deliveries_tx, t.deferred),
            *(t.events, t.rejections, t.suppressions),
        )
        self.dedup_ttl = dedup_ttl
        self.limit = limit
        self.outputs = GateOutputs(codec, topics)

    async def _limit_grew(self, decoded: Reject) -> bool:
        """A record over the known limit: ask the cluster again, since a limit raised after
        this worker started lets the ingress accept records this gate would refuse."""
        if self.limits is None or decoded.record["error_code"] != "limits.record_size":
            return False
        fresh = await self.limits.reread(self.limit)
        grew = fresh.request_bytes > self.limit.request_bytes
        self.limit = fresh
        return grew

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        if not self.directory.ready.is_set():
            await self.directory.ready.wait()
        state = Overlay(self.store)
        step = Step()
        traced = tracing.enabled()  # off: not even a no-op span per record
        for record in batch:
            if traced:
                result, deferrals = await self._traced(state, record, now, step.outputs)
            else:
                result, deferrals = await self._one(state, record, now)
                step.outputs.extend(self.outputs.of(record, result, now, deferrals))
            step.outcomes[result.outcome] += 1
        state.apply()
        return step

    async def _traced(
        self, state: Overlay, record: Consumed, now: datetime, outputs: list[Out]
    ) -> tuple[GateResult, int]:
        """``_one`` in the record's span, its outputs carrying the span."""
        with _span(record) as span:
            result, deferrals = await self._one(state, record, now)
            mark = len(outputs)
            outputs.extend(self.outputs.of(record, result, now, deferrals))
            _annotate(span, result, outputs, mark)
        return result, deferrals

    async def _one(self, state: Overlay, record: Consumed, now: datetime) -> tuple[GateResult, int]:
        decoded = admit(self.codec, record.value, record.key, record.position, now, self.limit)
        if isinstance(decoded, Reject) and await self._limit_grew(decoded):
            decoded = admit(self.codec, record.value, record.key, record.position, now, self.limit)
        if isinstance(decoded, Reject):
            return GateResult("undecodable", rejection=decoded.record), 0
        request = decoded.request
        p, tenant, idem = record.partition, request["tenant"], request["idempotency_key"]
        ts = now.timestamp()
        deferrals = int(record.header(DEFERRALS) or b"0")
        memo_key = f"m:{request['request_id']}\x1f{deferrals}"
        mark_key = f"w:{record.topic}:{p}"
        watermark = state.get(p, mark_key)
        memo = replayed_memo(
            record.offset,
            watermark,
            state.get(p, memo_key) if watermark is not None else None,
            ts,
        )
        rate_key = f"r:{tenant}"
        rates = state.get(p, rate_key)
        seen = Seen(
            state.get(p, f"d:{tenant}\x1f{idem}") if idem else None,
            window_counts(rates, ts),
            memo,
        )
        result = await self._decide(request, record, seen, deferrals, now)
        if result.memo_entry is not None:
            state.put(p, memo_key, result.memo_entry)
        if watermark is None or record.offset > watermark:
            state.put(p, mark_key, record.offset)
        if result.dedup_key is not None and result.dedup_entry is not None:
            state.put(p, f"d:{result.dedup_key}", result.dedup_entry)
        if result.count:
            state.put(p, rate_key, count_admission(rates, ts))
        return result, deferrals

    async def _decide(
        self, request: EmailRequest, record: Consumed, seen: Seen, deferrals: int, now: datetime
    ) -> GateResult:
        raw = record.value or b""
        kept = None
        if not self.codec.is_current(raw, "EmailRequest"):
            # an old-schema record: a dead letter keeps it re-encoded, without what the current
            # schema dropped; one still carrying its key in plaintext is refused outright
            kept = self.codec.current_bytes(raw)
            if self.codec.decode_written(raw).get("api_key"):
                arrival = Arrival(record.position, raw, record.key, kept=kept)
                return arrival.rejected(key_in_record(), now, request["tenant"])
        arrival = Arrival(record.position, raw, record.key, deferrals, record.headers, kept)
        directory, ttl, trust = self.directory, self.dedup_ttl, self.trust
        result = decide(request, directory.current, seen, arrival, now, trust=trust, dedup_ttl=ttl)
        if not (unknown_credentials(result) or unknown_sender(result)):
            return result
        # a key or sender made since the last snapshot must work at once; for a request the
        # ingress signed (and so answered 202) the lookup is owed, budget or not: a dead letter
        # there would lose mail the caller was told is on its way
        vouched = trust.vouched(record.headers, record.key, raw)
        key_id = record.header(KEY_ID)
        if unknown_credentials(result) and key_id:
            await directory.lookup_key_id(key_id.decode(errors="replace"), vouched=vouched)
            result = decide(
                request, directory.current, seen, arrival, now, trust=trust, dedup_ttl=ttl
            )
        if unknown_sender(result):
            await directory.lookup_senders(request["tenant"], vouched=vouched)
            result = decide(
                request, directory.current, seen, arrival, now, trust=trust, dedup_ttl=ttl
            )
        return result

    def housekeeping(self, now: datetime) -> None:
        """Expired dedup keys and memos, and windows that count nothing any more, go."""
        ts = now.timestamp()

        def expired(key: str, value: Any) -> bool:
            kind = key[:2]
            if kind in ("d:", "m:"):
                return float(value["expires"]) <= ts
            return kind == "r:" and windows_expired(value, ts)

        self.store.sweep(expired)

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        return _crashed(self.outputs, record, error, now)


def _span(record: Consumed, stage: str = STAGE) -> AbstractContextManager[Span]:
    return tracing.record_span(stage, record.topic, record.partition, record.offset, record.headers)


def _annotate(span: Span, result: GateResult, outputs: list[Out], since: int) -> None:
    """The gate's span names the message and its decision; what it produced carries it."""
    message_id = next((task["message_id"] for _, _, task in result.deliveries), None)
    if message_id is None:
        message_id = next((ev["message_id"] for ev in result.events if ev["message_id"]), None)
    if message_id:
        span.set_attribute(tracing.MESSAGE_ID, message_id)
    span.set_attribute("postwire.outcome", result.outcome)
    tracing.stamp(outputs, since)


def _crashed(outputs: GateOutputs, record: Consumed, error: Exception, now: datetime) -> Step:
    topic = outputs.topics.rejections
    step = Step(outputs=[dead_letter(outputs.codec, topic, STAGE, record, error, now)])
    step.outcomes["crashed"] += 1
    return step


class DeferralStage:
    """Requests over their rate limit wait on ``deferred`` until their window ends, then go back
    to ``requests``. Records of a partition are deferred in time order, so holding a partition at
    its first record that is not due yet holds nothing that is."""

    name = "deferral"
    max_batch = 500
    concurrency = 0
    stores: tuple[Store, ...] = ()

    def __init__(self, codec: Codec, topics: TopicNames) -> None:
        self.topics = topics
        self.inputs: tuple[str, ...] = (topics.deferred,)
        self.writes: tuple[str, ...] = (topics.requests, topics.rejections)
        self.outputs = GateOutputs(codec, topics)

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        step = Step()
        ts = now.timestamp()
        for record in batch:
            tp = (record.topic, record.partition)
            if tp in step.held:
                continue
            not_before = int(record.header(NOT_BEFORE) or b"0") / 1000
            if not_before > ts:
                step.held[tp] = Held(record.offset, not_before)
                continue
            deferrals = record.header(DEFERRALS) or b"1"
            headers = (*carried(record.headers), (DEFERRALS, deferrals))
            if tracing.enabled():
                with _span(record, self.name):
                    headers = (*tracing.with_context(headers),)
            step.outputs.append(Out(self.topics.requests, record.key, record.value, headers))
            step.outcomes["released"] += 1
        return step

    def housekeeping(self, now: datetime) -> None:
        return None

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        return _crashed(self.outputs, record, error, now)
