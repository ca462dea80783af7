"""Committing a consumer's offsets for the partitions it still owns.

A consumer that lost its group membership while it worked (a frozen broker, a long pause:
its session expired and the group rebalanced) has its commit refused with
``CommitFailedError``. What it did is already safe: its outputs were acknowledged (or its rows
committed) before the commit, and whoever owns the partitions now repeats that work from the
last committed offset, which every stage and sink does idempotently. So the refusal is logged
and the consumer goes on (it rejoins at its next fetch) instead of crashing its process."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError

__all__ = ["commit_owned"]

log = logging.getLogger("postwire.kafka")


async def commit_owned(
    consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int], what: str
) -> bool:
    """Commit ``offsets`` of the partitions ``consumer`` is assigned; False when the group had
    rebalanced meanwhile and the commit was refused (``what`` names the consumer in the log)."""
    assigned = consumer.assignment()
    owned = {tp: off for tp, off in offsets.items() if tp in assigned}
    if not owned:
        return True
    try:
        await consumer.commit(owned)
    except CommitFailedError as exc:
        log.warning(
            "%s: offsets not committed, the group rebalanced meanwhile (the partitions' next "
            "owner repeats the work since the last commit): %s",
            what,
            str(exc).splitlines()[0],
        )
        return False
    return True
