"""One consumed record -> the row it becomes, or a dead letter: shared by the live sinks
(sinks/runner.py) and `postwire replay --into-sinks`, so a replay maps exactly as the sink did."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRecord

from sinks.tables import Row, TableSpec, sink_failure_row
from streams.contract.codec import Codec
from streams.errors import CodecError
from streams.kafka.records import SourcePosition

__all__ = ["Mapped", "dead_letter_row", "map_record", "origin_of"]

log = logging.getLogger("postwire.sinks")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Mapped:
    table: str  # the spec's table, or "rejections" for a record that could not be mapped
    row: Row | None  # None: the record has no row in this table
    dead_lettered: bool = False
    record: dict[str, Any] | None = None  # the decoded value, when there was one


def map_record(
    spec: TableSpec,
    codec: Codec,
    msg: ConsumerRecord[bytes, bytes],
    now: Callable[[], datetime] = _now,
) -> Mapped:
    src = SourcePosition(msg.topic, msg.partition, msg.offset, msg.timestamp)
    raw = msg.value or b""
    try:
        if msg.value is None:
            return Mapped(spec.table, spec.tombstone(msg.key, src))
        _, record = codec.decode(raw, expected=spec.record)
        return Mapped(spec.table, spec.to_row(record, src), record=record)
    except (CodecError, KeyError, TypeError, ValueError) as exc:
        code = exc.code if isinstance(exc, CodecError) else "sink.unmappable"
        log.warning("dead-lettering %s:%d:%d: %s", msg.topic, msg.partition, msg.offset, exc)
        row = sink_failure_row(src, f"sink.{spec.table}", code, str(exc), raw, now())
        return Mapped("rejections", row, dead_lettered=True)


def origin_of(msg: ConsumerRecord[bytes, bytes]) -> tuple[SourcePosition, bytes]:
    """What the writer hands back to ``dead_letter_row`` when PostgreSQL refuses a row."""
    return SourcePosition(msg.topic, msg.partition, msg.offset), msg.value or b""


def dead_letter_row(
    table: str, origin: Any, exc: Exception, now: Callable[[], datetime] = _now
) -> Row | None:
    if origin is None:
        return None
    src, raw = origin
    log.warning("dead-lettering %s:%d:%d: %s", src.topic, src.partition, src.offset, exc)
    # PostgreSQL text cannot hold NUL, and the message may quote the offending value
    error = str(exc).replace("\x00", "\\x00")
    return sink_failure_row(src, f"sink.{table}", "sink.rejected_row", error, raw, now())
