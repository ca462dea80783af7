"""Per-table mapping from decoded records to rows (pure), and the upsert statement of each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from streams.codec import Record
from streams.settings import Settings

__all__ = [
    "REJECTION_COLUMNS",
    "Row",
    "Source",
    "TableSpec",
    "rejection_row",
    "sink_failure_row",
    "table_specs",
]

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class TableSpec:
    table: str
    topic: str
    record: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    to_row: Callable[[Record, Source], Row]
    # columns overwritten when a row with the same key arrives again; empty: first write wins
    update: tuple[str, ...] = ()


def _request_row(r: Record, src: Source) -> Row:
    return (
        r["request_id"],
        r["tenant"],
        r["operation"],
        r["idempotency_key"],
        r["priority"],
        len(r["recipients"]),
        r["categories"],
        r["created_at"],
        src.topic,
        src.partition,
        src.offset,
    )


def _verification_row(r: Record, _src: Source) -> Row:
    return (
        r["request_id"],
        r["address"],
        r["tenant"],
        r["normalized"],
        r["is_reachable"],
        r["score"],
        r["reasons"],
        orjson.dumps(r).decode(),
        r["cached"],
        r["verified_at"],
        r["requested_at"],
    )


_EVENT_DETAIL = (
    "smtp",
    "bounce_class",
    "retry_after_ms",
    "attempt",
    "url",
    "user_agent",
    "categories",
    "custom_args",
)


def _event_row(r: Record, _src: Source) -> Row:
    detail = {k: r[k] for k in _EVENT_DETAIL if r.get(k) not in (None, [], {})}
    return (
        r["event_id"],
        r["tenant"],
        r["type"],
        r["request_id"],
        r["message_id"],
        r["recipient"],
        r["reason"],
        orjson.dumps(detail).decode(),
        r["occurred_at"],
    )


REJECTION_COLUMNS = (
    "source_topic",
    "source_partition",
    "source_offset",
    "stage",
    "error_code",
    "error",
    "tenant_id",
    "raw",
    "rejected_at",
)


def rejection_row(r: Record, _src: Source | None = None) -> Row:
    return (
        r["source_topic"],
        r["source_partition"],
        r["source_offset"],
        r["stage"],
        r["error_code"],
        r["error"],
        r["tenant"],
        r["raw"],
        r["rejected_at"],
    )


def sink_failure_row(
    src: Source, stage: str, code: str, error: str, raw: bytes, now: datetime
) -> Row:
    """A record a sink could not map lands in ``rejections`` in the same transaction."""
    return (src.topic, src.partition, src.offset, stage, code, error, None, raw, now)


def table_specs(settings: Settings) -> dict[str, TableSpec]:
    t = settings.topics
    specs = [
        TableSpec(
            table="requests",
            topic=t.accepted,
            record="EmailRequest",
            columns=(
                "request_id",
                "tenant_id",
                "operation",
                "idempotency_key",
                "priority",
                "recipient_count",
                "categories",
                "created_at",
                "source_topic",
                "source_partition",
                "source_offset",
            ),
            key=("request_id",),
            to_row=_request_row,
        ),
        TableSpec(
            table="verifications",
            topic=t.verifications,
            record="VerificationResult",
            columns=(
                "request_id",
                "address",
                "tenant_id",
                "normalized",
                "is_reachable",
                "score",
                "reasons",
                "result",
                "cached",
                "verified_at",
                "requested_at",
            ),
            key=("request_id", "address"),
            to_row=_verification_row,
        ),
        TableSpec(
            table="events",
            topic=t.events,
            record="DeliveryEvent",
            columns=(
                "event_id",
                "tenant_id",
                "type",
                "request_id",
                "message_id",
                "recipient",
                "reason",
                "detail",
                "occurred_at",
            ),
            key=("event_id",),
            to_row=_event_row,
        ),
        TableSpec(
            table="rejections",
            topic=t.rejections,
            record="Rejection",
            columns=REJECTION_COLUMNS,
            key=("source_topic", "source_partition", "source_offset"),
            to_row=rejection_row,
        ),
    ]
    return {s.table: s for s in specs}
