"""One builder per record type: DeliveryEvent (with stable ids, so a replayed event upserts onto
itself), Suppression and its topic key, Rejection, and the DeliveryTask id and lane."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from streams.contract.codec import Record
from streams.errors import PostwireError
from streams.kafka.records import SourcePosition

__all__ = [
    "TRANSACTIONAL",
    "digest",
    "lane_of",
    "make_event",
    "make_suppression",
    "parse_suppression_key",
    "rejection",
    "suppression_key",
    "task_id",
]

# priorities that ride the transactional lane
TRANSACTIONAL = frozenset({"critical", "high"})


def digest(*parts: object) -> str:
    """Stable across processes and Python versions (unlike ``hash()``)."""
    joined = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()


def make_event(
    event_type: str,
    tenant: str,
    now: datetime,
    *,
    request_id: str | None = None,
    message_id: str | None = None,
    recipient: str | None = None,
    reason: str | None = None,
    retry_after_ms: int | None = None,
    attempt: int = 0,
    categories: Sequence[str] = (),
    custom_args: Mapping[str, str] | None = None,
    smtp: Mapping[str, object] | None = None,
    bounce_class: str | None = None,
) -> Record:
    return {
        "event_id": digest(event_type, tenant, request_id, message_id, recipient, reason, attempt),
        "smtp": dict(smtp) if smtp is not None else None,
        "bounce_class": bounce_class,
        "tenant": tenant,
        "type": event_type,
        "request_id": request_id,
        "message_id": message_id,
        "recipient": recipient,
        "reason": reason,
        "retry_after_ms": retry_after_ms,
        "attempt": attempt,
        "categories": list(categories),
        "custom_args": dict(custom_args or {}),
        "occurred_at": now,
    }


def make_suppression(
    tenant: str, address: str, reason: str, source: str, now: datetime, detail: str | None = None
) -> Record:
    """A Suppression record for the compacted topic; addresses are kept lower-cased."""
    return {
        "tenant": tenant,
        "address": address.lower(),
        "reason": reason,
        "source": source,
        "detail": detail,
        "created_at": now,
    }


def suppression_key(tenant: str, address: str) -> bytes:
    """The key of a Suppression on its compacted topic: one entry per tenant and address."""
    return f"{tenant}\x1f{address.lower()}".encode()


def parse_suppression_key(key: bytes | None) -> tuple[str, str] | None:
    """(tenant, address) of a suppression key, or None when it is not one."""
    tenant, sep, address = (key or b"").decode().partition("\x1f")
    if not sep or not tenant or not address:
        return None
    return tenant, address


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


def lane_of(priority: str) -> Literal["tx", "bulk"]:
    """critical/high ride the transactional lane; normal/bulk share the bulk lane."""
    return "tx" if priority in TRANSACTIONAL else "bulk"


def task_id(message_id: str, recipient: str) -> str:
    """A DeliveryTask's id: stable, so a replayed request makes the same tasks."""
    return digest("task", message_id, recipient.lower())
