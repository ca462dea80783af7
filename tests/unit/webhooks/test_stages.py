"""The batch and delay stages' decisions on records, without Kafka or a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from streams.contract.build import make_event
from streams.contract.codec import default_codec
from streams.contract.records import WebhookBatch
from streams.db.webhooks import EndpointRow
from streams.kafka.config import TopicNames
from streams.runtime.records import Consumed
from streams.secret import ServerSecret
from streams.settings import Settings
from streams.stages.webhooks import (
    ENQUEUED,
    BatchStage,
    Endpoint,
    EndpointBook,
    WebhookDelayStage,
    WebhookShell,
)

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
TOPICS = TopicNames("pw")
CODEC = default_codec()


def _shell(**overrides: object) -> WebhookShell:
    settings = Settings(
        webhook_retry_tiers="10,60",
        webhook_batch_events=3,
        **overrides,  # type: ignore[arg-type]
    ).webhooks
    book = EndpointBook("postgresql://unused", ServerSecret(b"k" * 32), 1.0)
    book.current = {
        "acme": Endpoint(
            EndpointRow("acme", True, "http://127.0.0.1:1/", frozenset({"delivered", "bounce"})),
            None,
        )
    }
    book.ready.set()
    return WebhookShell(settings, TOPICS, CODEC, book)


def _event_record(offset: int, tenant: str, kind: str) -> Consumed:
    event = make_event(kind, tenant, NOW, message_id=f"m{offset}", recipient="a@b.example")  # type: ignore[arg-type]
    return Consumed(TOPICS.events, 0, offset, b"k", CODEC.encode("DeliveryEvent", event))


async def test_batch_stage_keeps_what_the_endpoint_asked_for_in_bounded_batches() -> None:
    stage = BatchStage(_shell())
    records = [_event_record(i, "acme", "delivered") for i in range(5)]
    records.append(_event_record(5, "acme", "processed"))  # not selected
    records.append(_event_record(6, "nobody", "delivered"))  # no endpoint
    step = await stage.process(records, NOW)
    assert step.outcomes == {"batched": 5, "not_selected": 1, "no_endpoint": 1}
    batches = [CODEC.decode_as(o.value or b"", "WebhookBatch") for o in step.outputs]
    assert [b["events"] for b in batches] == [3, 2]
    assert {o.topic for o in step.outputs} == {TOPICS.webhooks}
    assert {o.key for o in step.outputs} == {b"acme"}
    ids = [e["sg_message_id"] for b in batches for e in orjson.loads(b["payload"])]
    assert ids == [f"m{i}" for i in range(5)]
    again = await stage.process(records, NOW)
    assert [o.value for o in again.outputs] == [o.value for o in step.outputs]


def _parked(not_before: datetime, enqueued: datetime, offset: int = 0) -> Consumed:
    batch: WebhookBatch = {
        "batch_id": "b1",
        "tenant": "acme",
        "payload": b"[]",
        "events": 1,
        "attempt": 1,
        "first_at": NOW,
        "not_before": not_before,
        "last_error": "HTTP 500",
    }
    headers = ((ENQUEUED, str(int(enqueued.timestamp() * 1000)).encode()),)
    topic = "pw.webhooks.retry.10s"
    return Consumed(topic, 0, offset, b"acme", CODEC.encode("WebhookBatch", batch), headers)


async def test_delay_tier_holds_until_due_then_releases() -> None:
    shell = _shell()
    stage = WebhookDelayStage(shell, 10, shell.tiers[10])
    record = _parked(NOW + timedelta(seconds=10), NOW)
    early = await stage.process([record, _parked(NOW, NOW, 1)], NOW + timedelta(seconds=3))
    assert early.outputs == []
    held = early.held[(record.topic, 0)]
    assert held.offset == 0
    assert held.until == (NOW + timedelta(seconds=10)).timestamp()
    due = await stage.process([record], NOW + timedelta(seconds=10))
    assert [o.topic for o in due.outputs] == [TOPICS.webhooks]
    assert due.outputs[0].value == record.value


async def test_delay_tier_moves_a_long_wait_to_the_tier_that_fits() -> None:
    shell = _shell()
    stage = WebhookDelayStage(shell, 10, shell.tiers[10])
    record = _parked(NOW + timedelta(seconds=100), NOW)
    step = await stage.process([record], NOW + timedelta(seconds=10))
    assert [o.topic for o in step.outputs] == [shell.tiers[60]]
    moved = CODEC.decode_as(step.outputs[0].value or b"", "WebhookBatch")
    assert moved["not_before"] == NOW + timedelta(seconds=100)
    assert moved["attempt"] == 1
