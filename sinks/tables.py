"""Per-table mapping from decoded records to rows (pure), and the upsert statement of each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
            table="rejections",
            topic=t.rejections,
            record="Rejection",
            columns=REJECTION_COLUMNS,
            key=("source_topic", "source_partition", "source_offset"),
            to_row=rejection_row,
        ),
    ]
    return {s.table: s for s in specs}
