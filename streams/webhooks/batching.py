"""Grouping mapped events into webhook posts (pure): per endpoint, in the order they came,
each post a JSON array bounded in events and in bytes. The ``batch_id`` is a digest of the
event ids in it, so the same events batched again get the same id."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Batch", "batch_events"]


@dataclass
class Batch:
    tenant: str
    event_ids: list[str] = field(default_factory=list)
    items: list[bytes] = field(default_factory=list)  # each one event's JSON object
    size: int = 2  # the brackets

    @property
    def payload(self) -> bytes:
        return b"[" + b",".join(self.items) + b"]"

    @property
    def batch_id(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(self.tenant.encode())
        for event_id in self.event_ids:
            h.update(b"\x1f" + event_id.encode())
        return h.hexdigest()

    def fits(self, item: bytes, max_events: int, max_bytes: int) -> bool:
        extra = len(item) + (1 if self.items else 0)
        return len(self.items) < max_events and self.size + extra <= max_bytes

    def add(self, event_id: str, item: bytes) -> None:
        self.size += len(item) + (1 if self.items else 0)
        self.items.append(item)
        self.event_ids.append(event_id)


def batch_events(
    events: Iterable[tuple[str, str, bytes]], max_events: int, max_bytes: int
) -> list[Batch]:
    """``(tenant, event id, JSON object)`` in order -> the batches to post, per tenant in that
    order. One event larger than ``max_bytes`` goes alone rather than being lost."""
    if max_events < 1 or max_bytes < 3:
        raise ValueError("a webhook batch holds at least one event")
    open_batches: dict[str, Batch] = {}
    done: list[Batch] = []
    for tenant, event_id, item in events:
        current = open_batches.get(tenant)
        if current is not None and not current.fits(item, max_events, max_bytes):
            done.append(current)
            current = None
        if current is None:
            current = open_batches[tenant] = Batch(tenant)
        current.add(event_id, item)
    done.extend(open_batches.values())
    return done
