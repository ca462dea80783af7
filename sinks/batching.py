"""Buffer rows per partition until a batch is due by size or age (pure: time is a parameter)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batch", "BatchBuffer"]


@dataclass
class Batch:
    """Rows to write in one transaction, and the next offset to commit per partition after it."""

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    offsets: dict[Hashable, int] = field(default_factory=dict)
    # where each row came from, parallel to ``rows``, so one bad row can be dead-lettered
    origins: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())


class BatchBuffer:
    def __init__(self, max_rows: int, linger: float) -> None:
        self.max_rows = max_rows
        self.linger = linger
        self._rows: dict[str, list[tuple[Any, ...]]] = {}
        self._origins: dict[str, list[Any]] = {}
        self._offsets: dict[Hashable, int] = {}
        self._count = 0
        self._first_at: float | None = None

    def add(
        self,
        partition: Hashable,
        offset: int,
        table: str,
        row: tuple[Any, ...] | None,
        now: float,
        origin: Any = None,
    ) -> None:
        """Buffer ``row`` (None: nothing to write, but the offset still counts as handled)."""
        if row is not None:
            self._rows.setdefault(table, []).append(row)
            self._origins.setdefault(table, []).append(origin)
            self._count += 1
        self._offsets[partition] = offset + 1
        if self._first_at is None:
            self._first_at = now

    def due(self, now: float) -> bool:
        if not self._offsets:
            return False
        if self._count >= self.max_rows:
            return True
        return self._first_at is not None and now - self._first_at >= self.linger

    def take(self) -> Batch:
        batch = Batch(self._rows, self._offsets, self._origins)
        self._rows, self._origins, self._offsets = {}, {}, {}
        self._count, self._first_at = 0, None
        return batch

    def __len__(self) -> int:
        return self._count
