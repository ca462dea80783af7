"""Small immutable records the runtime passes around: what was consumed and what is to be
produced. (The clock a stage is given is ``streams.clock.Clock``.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.kafka.records import SourcePosition

__all__ = ["Consumed", "Headers", "Out", "header"]

Headers = Sequence[tuple[str, bytes]]


def header(headers: Any, name: str) -> bytes | None:
    """Kafka headers arrive as a mapping or as (name, value) pairs depending on the client."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key == name:
            return bytes(value) if value is not None else None
    return None


@dataclass(frozen=True, slots=True)
class Consumed:
    """One record as a stage sees it, with where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        return header(self.headers, name)

    @property
    def position(self) -> SourcePosition:
        return SourcePosition(self.topic, self.partition, self.offset, self.timestamp_ms)


@dataclass(frozen=True, slots=True)
class Out:
    """One record to produce. ``partition`` None: the producer's partitioner picks by key."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    partition: int | None = None
