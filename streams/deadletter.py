"""Build the Rejection record every stage sends to the dead-letter topic."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from streams.codec import Record
from streams.errors import PostwireError

__all__ = ["SourcePosition", "rejection"]


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
