"""What a stage is to the runtime: a plain object that turns a batch of consumed records into
output records and state changes (written into its stores), with no Kafka client and no faust.

The worker, ``postwire replay`` and the tests drive a stage the same way: hand it a batch and a
time, take the records it returns."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from streams.runtime.records import Consumed, Out
from streams.runtime.state import Store

__all__ = ["Admitting", "Held", "Stage", "Step"]


@dataclass(frozen=True, slots=True)
class Held:
    """A partition the stage stopped on: ``offset`` is the first record it did not take (it is
    read again from there), ``until`` the epoch second when it is worth trying again."""

    offset: int
    until: float


@dataclass
class Step:
    """What one batch produced: records to send, outcome counts for metrics, held partitions."""

    outputs: list[Out] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    held: dict[tuple[str, int], Held] = field(default_factory=dict)

    def extend(self, other: Step) -> None:
        self.outputs.extend(other.outputs)
        self.outcomes.update(other.outcomes)
        self.held.update(other.held)


class Stage(Protocol):
    name: str  # metric label and consumer-group suffix
    inputs: tuple[str, ...]  # topics, co-partitioned with every store
    # every topic it may write (its stores' changelogs aside): checked at start
    writes: tuple[str, ...]
    stores: tuple[Store, ...]
    max_batch: int
    # 0: batches, one at a time; N: records one by one, up to N in flight (network-bound work)
    concurrency: int

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        """Handle ``batch`` (records of owned partitions, in offset order per partition)."""
        ...

    def housekeeping(self, now: datetime) -> None:
        """Periodic clean-up (expired entries become deletions in the stores)."""
        ...

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        """The dead letter for a record whose processing raised unexpectedly."""
        ...


@runtime_checkable
class Admitting(Protocol):
    """A concurrent stage that takes records ahead of their turn and finishes them in an order
    of its own (the delivery lane's scheduler): up to ``read_ahead`` records admitted and not
    finished. The runner commits a partition up to its oldest record not finished, so what
    was admitted and not finished is read again after a crash."""

    read_ahead: int

    async def admit(self, batch: Sequence[Consumed], now: datetime) -> list[asyncio.Future[Step]]:
        """One future per record of ``batch``, in its order: its result is the record's Step
        once finished; cancelled when the stage gave the record up (``release``)."""
        ...

    def release(self) -> None:
        """Give up every admitted record whose work has not started (cancel its future): the
        partitions are being revoked or the stage stops. Work already started finishes."""
        ...

    def flushed(self, futures: Sequence[asyncio.Future[Step]]) -> None:
        """These records' outputs and store changes are acknowledged by Kafka (and the offsets
        committed as far as they go): what a crash can no longer make the stage repeat."""
        ...
