"""How much work a stage has done and not yet committed (pure: time is a parameter).

A crash repeats everything processed since the last commit. The runner checkpoints every
``commit_interval``, but a commit waits for Kafka to acknowledge the checkpoint's records; when
acknowledgements fall behind (a full producer buffer, a slow broker), processed-but-uncommitted
work would grow with the backlog. The budget says when it is over ``max_records`` records or
its oldest record is ``max_seconds`` old, and the runner then stops fetching until the commits
catch up."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["CommitBudget", "Group"]


@dataclass(frozen=True, slots=True)
class Group:
    """The records of one checkpoint: how many, and when the first of them was processed."""

    records: int
    first_at: float


class CommitBudget:
    def __init__(self, max_records: int, max_seconds: float, now: float) -> None:
        self.max_records = max_records
        self.max_seconds = max_seconds
        self.last_commit = now
        self._sealed: deque[Group] = deque()
        self._open = 0
        self._open_at = 0.0
        self._records = 0

    def processed(self, records: int, now: float) -> None:
        """``records`` were processed at ``now`` (not yet part of a checkpoint)."""
        if records <= 0:
            return
        if self._open == 0:
            self._open_at = now
        self._open += records
        self._records += records

    def seal(self) -> Group:
        """A checkpoint takes everything processed since the last one."""
        group = Group(self._open, self._open_at)
        if group.records:
            self._sealed.append(group)
        self._open = 0
        return group

    def committed(self, group: Group, now: float) -> None:
        """The checkpoint of ``group`` was committed (checkpoints commit in order)."""
        self.last_commit = now
        if not group.records:
            return
        oldest = self._sealed.popleft()
        assert oldest == group, "checkpoints commit in the order they were sealed"
        self._records -= group.records

    @property
    def records(self) -> int:
        """Processed and not yet committed."""
        return self._records

    def age(self, now: float) -> float:
        """Seconds since the oldest uncommitted record was processed (0: none)."""
        if self._sealed:
            return now - self._sealed[0].first_at
        return now - self._open_at if self._open else 0.0

    def exceeded(self, now: float) -> bool:
        return self._records > 0 and (
            self._records >= self.max_records or self.age(now) >= self.max_seconds
        )
