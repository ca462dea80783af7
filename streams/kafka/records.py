"""Where a record came from: the one source position every stage, sink and dead letter uses."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SourcePosition"]


@dataclass(frozen=True, slots=True)
class SourcePosition:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int = 0  # the Kafka record's timestamp, where a reader needs it
