"""The pure half of `postwire replay`: times, which stages and topics may be replayed, offset
ranges per partition, progress over them, and the summary. No I/O here; time is a parameter."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.errors import NotReplayableError, TimeFormatError, TimeRangeError, UnknownTopicError
from streams.kafka.config import TopicNames

__all__ = [
    "REFUSED_STAGES",
    "REPLAYABLE_STAGES",
    "PartitionRange",
    "RangeTracker",
    "ReplaySummary",
    "parse_time",
    "plan_ranges",
    "replay_group",
    "resolve_topic",
    "stage_input",
    "time_window",
    "to_ms",
]

_RELATIVE = re.compile(r"-(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TIME_FORMS = "ISO 8601 (2025-05-01T12:00, UTC unless it has an offset) or relative (-15m, -2h, -1d)"


def parse_time(text: str, now: datetime, option: str = "--from") -> datetime:
    """An aware UTC datetime from ISO 8601 (naive means UTC), a relative ``-<n><s|m|h|d|w>``
    before ``now``, or ``now``."""
    value = text.strip()
    if value == "now":
        return now
    relative = _RELATIVE.fullmatch(value)
    if relative:
        return now - timedelta(seconds=int(relative[1]) * _UNIT_SECONDS[relative[2]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise TimeFormatError(f"{option} {text!r} is not {TIME_FORMS}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def time_window(start: str, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """[start, end): ``end`` defaults to now, and a later one means now (nothing newer exists)."""
    first = parse_time(start, now, "--from")
    asked = now if end is None else parse_time(end, now, "--to")
    last = min(asked, now)
    if first >= last:
        until = "now" if asked >= now else f"--to ({last:%Y-%m-%d %H:%M:%S} UTC)"
        raise TimeRangeError(f"--from ({first:%Y-%m-%d %H:%M:%S} UTC) must be before {until}")
    return first, last


def to_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


# --stage: which stages may run again over their input, and why the others may not
REPLAYABLE_STAGES = ("verify",)
_GATE_REFUSAL = (
    "the gate cannot be replayed: a replay starts with empty dedup, rate-limit and decision"
    " tables, so it would decide requests differently from the first time (admitting"
    " duplicates, throttling at replay speed) and hand send requests to the live delivery"
    " lanes again; replay accepted, events or rejections --into-sinks, or --stage verify"
)
_DELIVER_REFUSAL = (
    "{stage} cannot be replayed: the ledger of what was already sent lives in the live app's"
    " table, and a replay with an empty ledger would send that mail again"
)
REFUSED_STAGES = {
    "gate": _GATE_REFUSAL,
    **{
        stage: _DELIVER_REFUSAL.format(stage=stage)
        for stage in ("deliver", "deliver.tx", "deliver.bulk")
    },
}


def stage_input(stage: str, topics: TopicNames) -> str:
    """The topic a replayable stage reads; NotReplayableError with the reason otherwise."""
    if stage in REFUSED_STAGES:
        raise NotReplayableError(REFUSED_STAGES[stage])
    if stage == "verify":
        return topics.verify
    known = ", ".join((*REPLAYABLE_STAGES, *REFUSED_STAGES))
    raise NotReplayableError(f"unknown stage {stage!r}; the stages are {known}")


def replay_group(app_id: str, stage: str, now: datetime) -> str:
    """A consumer group of its own: the live group's offsets are never touched."""
    return f"{app_id}-replay-{stage}-{int(now.timestamp())}"


def resolve_topic(name: str, prefix: str, existing: Iterable[str]) -> str:
    """``name`` as given, or with the prefix in front (``accepted`` -> ``postwire.accepted``)."""
    found = set(existing)
    for candidate in (name, f"{prefix}.{name}"):
        if candidate in found:
            return candidate
    ours = sorted(t.removeprefix(f"{prefix}.") for t in found if t.startswith(f"{prefix}."))
    hint = f"; {prefix}'s topics are {', '.join(ours)}" if ours else f" and no {prefix}.* topics"
    raise UnknownTopicError(f"the cluster has no topic {name!r}{hint}")


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int  # the first offset to read
    end: int  # the first offset not to read

    @property
    def count(self) -> int:
        return self.end - self.start


def plan_ranges(
    first: Mapping[int, int | None], after: Mapping[int, int | None], high: Mapping[int, int]
) -> list[PartitionRange]:
    """Per partition: ``first`` is the earliest offset stamped at or after --from, ``after`` the
    earliest at or after --to (None: no such record yet), ``high`` the end offset now. A range
    stops at ``high`` so records produced while the replay runs are not part of it."""
    ranges = []
    for partition in sorted(high):
        now_end = high[partition]
        start = first.get(partition)
        start = now_end if start is None else min(start, now_end)
        end = after.get(partition)
        end = now_end if end is None else min(end, now_end)
        ranges.append(PartitionRange(partition, start, max(start, end)))
    return ranges


class RangeTracker:
    """How far each partition's range has been read; a partition is finished at its end offset
    even when the last offsets hold no record (compacted away, transaction markers)."""

    def __init__(self, ranges: Iterable[PartitionRange]) -> None:
        self.ranges = {r.partition: r for r in ranges}
        self.position = {p: r.start for p, r in self.ranges.items()}

    def wanted(self, partition: int, offset: int) -> bool:
        r = self.ranges.get(partition)
        return r is not None and r.start <= offset < r.end

    def advance(self, partition: int, position: int) -> None:
        """``position``: the next offset to read (one past the last record handled)."""
        r = self.ranges[partition]
        self.position[partition] = max(self.position[partition], min(position, r.end))

    def finished(self, partition: int) -> bool:
        return self.position[partition] >= self.ranges[partition].end

    @property
    def pending(self) -> list[int]:
        return [p for p in self.ranges if not self.finished(p)]

    @property
    def done(self) -> int:
        return sum(self.position[p] - r.start for p, r in self.ranges.items())

    @property
    def total(self) -> int:
        return sum(r.count for r in self.ranges.values())


@dataclass
class ReplaySummary:
    topic: str
    mode: str  # "into-sinks" or "stage"
    start: datetime
    end: datetime
    ranges: list[PartitionRange]
    stage: str | None = None
    group: str | None = None  # the consumer group a stage replay committed under
    records: int = 0  # records read in the range
    rows: dict[str, int] = field(default_factory=dict)  # rows handed to the writer, per table
    changed: dict[str, int] = field(default_factory=dict)  # rows PostgreSQL inserted or updated
    before: dict[str, int] = field(default_factory=dict)  # row counts per table
    after: dict[str, int] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)  # records a stage replay produced
    dead_lettered: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "mode": self.mode,
            "stage": self.stage,
            "group": self.group,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "partitions": [
                {"partition": r.partition, "start": r.start, "end": r.end} for r in self.ranges
            ],
            "records": self.records,
            "rows": self.rows,
            "changed": self.changed,
            "before": self.before,
            "after": self.after,
            "produced": self.produced,
            "dead_lettered": self.dead_lettered,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.per_second, 1),
        }
