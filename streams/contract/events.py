"""Build DeliveryEvent records with stable ids, so a replayed event upserts onto itself."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime

from streams.contract.codec import Record

__all__ = ["digest", "make_event", "make_suppression"]


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
