"""Build the Rejection record every stage sends to the dead-letter topic."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from streams.contract.codec import Codec, Record
from streams.errors import PostwireError, StageCrashError
from streams.runtime.records import Consumed, Out

__all__ = ["SourcePosition", "dead_letter", "rejection"]


@dataclass(frozen=True)
class SourcePosition:
    topic: str
    partition: int
    offset: int


def rejection(
    source: SourcePosition,
    stage: str,
    error: PostwireError,
    key: bytes | None,
    raw: bytes,
    now: datetime,
    tenant: str | None = None,
) -> Record:
    return {
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "stage": stage,
        "error_code": error.code,
        "error": str(error),
        "key": key,
        "raw": raw,
        "tenant": tenant,
        "rejected_at": now,
    }


def dead_letter(
    codec: Codec, topic: str, stage: str, record: Consumed, error: Exception, now: datetime
) -> Out:
    """The Rejection record for a consumed record, ready to produce to ``topic``. An error that
    is not one of ours (a bug) is reported as ``stage.crashed`` with its type and message."""
    ours = (
        error
        if isinstance(error, PostwireError)
        else StageCrashError(f"{type(error).__name__}: {error}")
    )
    source = SourcePosition(record.topic, record.partition, record.offset)
    dead = rejection(source, stage, ours, record.key, record.value or b"", now)
    return Out(topic, record.key, codec.encode("Rejection", dead))
