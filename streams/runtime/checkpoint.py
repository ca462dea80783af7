"""Whether a table kept on disk can go on from its mark, or must be rebuilt from the changelog's
start (pure: the caller hands in what the cluster says about the changelog partition).

A mark says "this table holds exactly the changelog records up to ``offset``". It is trusted
only when the changelog it names is still that log and still holds everything after it:

- the same topic and partition, on the same cluster (a new Kafka data dir is a new cluster id);
- ``offset < end``: a changelog that ends before the mark is not the log the table came from
  (recreated, or the table is from another cluster that happens to share the id);
- ``offset >= start - 1``: retention or deleteRecords removed nothing the table has not seen;
- younger than the changelog's ``delete.retention.ms`` (less a margin): compaction may drop a
  tombstone after that long, and a table that never saw it would keep a deleted entry.

Compaction elsewhere is harmless: it removes only records a later one of the same key
replaces, and the table reads every record after its mark."""

from __future__ import annotations

from dataclasses import dataclass, replace

import orjson

__all__ = ["TOMBSTONE_MARGIN", "Mark", "Resume", "resume_from"]

# records sent after a mark's offset can be older than the mark by the commit pipeline's depth;
# this much of the tombstone horizon is not relied on
TOMBSTONE_MARGIN = 600.0


@dataclass(frozen=True, slots=True)
class Mark:
    topic: str
    partition: int
    offset: int  # the last changelog offset the table reflects
    cluster: str | None  # the Kafka cluster id the changelog lives on
    written: float  # epoch seconds
    entries: int | None = None  # the table's entry count with this mark (no count on reopen)

    def counting(self, entries: int) -> Mark:
        return replace(self, entries=entries)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "cluster": self.cluster,
                "written": self.written,
                "entries": self.entries,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Mark:
        data = orjson.loads(raw)
        return cls(
            str(data["topic"]),
            int(data["partition"]),
            int(data["offset"]),
            None if data["cluster"] is None else str(data["cluster"]),
            float(data["written"]),
            None if data.get("entries") is None else int(data["entries"]),
        )


@dataclass(frozen=True, slots=True)
class Resume:
    """Where to read the changelog from: ``offset``, keeping the table, or (``offset`` None)
    from the start into an emptied table, because of ``reason``."""

    offset: int | None
    reason: str


def resume_from(
    mark: Mark | None,
    *,
    topic: str,
    partition: int,
    cluster: str | None,
    start: int,
    end: int,
    now: float,
    tombstone_horizon: float | None,
) -> Resume:
    """Whether the table marked ``mark`` goes on from its mark; ``start``/``end``: the changelog
    partition's log start and end offsets, ``tombstone_horizon``: its delete.retention.ms in
    seconds (None: unknown, no mark is trusted)."""
    if mark is None:
        return Resume(None, "no mark")
    if (mark.topic, mark.partition) != (topic, partition):
        return Resume(None, f"marked for {mark.topic}[{mark.partition}]")
    if cluster is None or mark.cluster != cluster:
        return Resume(None, f"marked on cluster {mark.cluster}, the changelog is on {cluster}")
    if mark.offset >= end:
        return Resume(None, f"marked at offset {mark.offset}, the changelog ends at {end}")
    if mark.offset < start - 1:
        return Resume(None, f"marked at offset {mark.offset}, the changelog starts at {start}")
    if tombstone_horizon is None:
        return Resume(None, "the changelog's delete.retention.ms is unknown")
    age = now - mark.written
    if age > tombstone_horizon - TOMBSTONE_MARGIN:
        return Resume(None, f"marked {age:.0f}s ago, deletions are kept {tombstone_horizon:.0f}s")
    return Resume(mark.offset + 1, f"marked at offset {mark.offset}")
