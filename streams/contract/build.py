"""One builder per record type: DeliveryEvent (with stable ids, so a replayed event upserts onto
itself), Suppression and its topic key, Rejection, and the DeliveryTask id and lane."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal, TypedDict, Unpack

from streams.contract.records import (
    Address,
    Content,
    DeliveryEvent,
    DeliveryTask,
    EmailRequest,
    EventType,
    Operation,
    Priority,
    Recipient,
    Rejection,
    SmtpReply,
    Suppression,
    TrackEvent,
)
from streams.errors import PostwireError
from streams.kafka.records import SourcePosition
from streams.obs.redact import scrub_key_bytes, scrub_keys

__all__ = [
    "TRANSACTIONAL",
    "EventDetails",
    "RequestDetails",
    "delivery_task",
    "digest",
    "lane_of",
    "make_event",
    "make_suppression",
    "parse_suppression_key",
    "record_key",
    "rejection",
    "suppression_key",
    "task_id",
]

MAX_ERROR_CHARS = 2000
# priorities that ride the transactional lane
TRANSACTIONAL = frozenset({"critical", "high"})


def digest(*parts: object) -> str:
    """Stable across processes and Python versions (unlike ``hash()``)."""
    joined = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()


class EventDetails(TypedDict, total=False):
    """What an event may say beyond its type, tenant and time (all optional)."""

    request_id: str | None
    message_id: str | None
    recipient: str | None
    reason: str | None
    retry_after_ms: int | None
    attempt: int
    categories: Sequence[str]
    custom_args: Mapping[str, str] | None
    smtp: SmtpReply | None
    bounce_class: str | None
    url: str | None
    user_agent: str | None
    ip: str | None
    asm_group_id: int | None


class RequestDetails(TypedDict):
    """What every event about one request repeats from it."""

    request_id: str
    categories: list[str]
    custom_args: dict[str, str]
    asm_group_id: int | None


def make_event(
    event_type: EventType, tenant: str, now: datetime, **details: Unpack[EventDetails]
) -> DeliveryEvent:
    request_id = details.get("request_id")
    message_id = details.get("message_id")
    recipient = details.get("recipient")
    reason = details.get("reason")
    attempt = details.get("attempt", 0)
    smtp = details.get("smtp")
    return {
        "event_id": digest(event_type, tenant, request_id, message_id, recipient, reason, attempt),
        "tenant": tenant,
        "type": event_type,
        "request_id": request_id,
        "message_id": message_id,
        "recipient": recipient,
        "reason": reason,
        "smtp": SmtpReply(**smtp) if smtp is not None else None,
        "bounce_class": details.get("bounce_class"),
        "retry_after_ms": details.get("retry_after_ms"),
        "attempt": attempt,
        "url": details.get("url"),
        "user_agent": details.get("user_agent"),
        "ip": details.get("ip"),
        "categories": list(details.get("categories", ())),
        "custom_args": dict(details.get("custom_args") or {}),
        "asm_group_id": details.get("asm_group_id"),
        "occurred_at": now,
    }


def make_suppression(
    tenant: str,
    address: str,
    reason: str,
    source: str,
    now: datetime,
    detail: str | None = None,
    group_id: int | None = None,
) -> Suppression:
    """A Suppression record for the compacted topic; addresses are kept lower-cased. With
    ``group_id``, the address leaves that suppression group only."""
    return {
        "tenant": tenant,
        "address": address.lower(),
        "reason": reason,
        "source": source,
        "group_id": group_id,
        "detail": detail,
        "created_at": now,
    }


def suppression_key(tenant: str, address: str, group_id: int | None = None) -> bytes:
    """The key of a Suppression on its compacted topic: one entry per tenant and address (and
    group, for a group's member)."""
    key = f"{tenant}\x1f{address.lower()}"
    return (key if group_id is None else f"{key}\x1f{group_id}").encode()


def record_key(suppression: Suppression) -> bytes:
    """The topic key of ``suppression``."""
    return suppression_key(suppression["tenant"], suppression["address"], suppression["group_id"])


def parse_suppression_key(key: bytes | None) -> tuple[str, str, int | None] | None:
    """(tenant, address, group or None) of a suppression key, or None when it is not one."""
    parts = (key or b"").decode(errors="replace").split("\x1f")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        return None
    if len(parts) == 2:
        return parts[0], parts[1], None
    if not (parts[2].isascii() and parts[2].isdigit()) or len(parts[2]) > 10:
        return None
    return parts[0], parts[1], int(parts[2])


def rejection(
    source: SourcePosition,
    stage: str,
    error: PostwireError,
    key: bytes | None,
    raw: bytes,
    now: datetime,
    tenant: str | None = None,
) -> Rejection:
    """A dead letter: the input as it came, less anything shaped like an API key (overwritten
    in place, so the bytes still decode), with the error that stopped it."""
    return {
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "stage": stage,
        "error_code": error.code,
        # bounded: a dead letter must fit the topic its record came from (an error may quote
        # the request, say a megabyte-long address)
        "error": scrub_keys(str(error))[:MAX_ERROR_CHARS],
        "key": None if key is None else scrub_key_bytes(key),
        "raw": scrub_key_bytes(raw),
        "tenant": tenant,
        "rejected_at": now,
    }


def lane_of(priority: str) -> Literal["tx", "bulk"]:
    """critical/high ride the transactional lane; normal/bulk share the bulk lane."""
    return "tx" if priority in TRANSACTIONAL else "bulk"


def task_id(message_id: str, recipient: str) -> str:
    """A DeliveryTask's id: stable, so a replayed request makes the same tasks."""
    return digest("task", message_id, recipient.lower())


def delivery_task(
    request: EmailRequest,
    recipient: Recipient,
    domain: str,
    *,
    sender: Address,
    content: Content,
) -> DeliveryTask:
    """The first attempt's DeliveryTask for one recipient of a send request."""
    message_id = request["request_id"]
    return {
        "task_id": task_id(message_id, recipient["email"]),
        "message_id": message_id,
        "request_id": request["request_id"],
        "tenant": request["tenant"],
        "priority": request["priority"],
        "domain": domain,
        "from": sender,
        "reply_to": request["reply_to"],
        "recipient": recipient,
        "content": content,
        "substitutions": request["substitutions"],
        "categories": request["categories"],
        "custom_args": request["custom_args"],
        "asm_group_id": request.get("asm_group_id"),
        "attempt": 0,
        "not_before": request["send_at"],
        "first_attempt_at": None,
        "created_at": request["created_at"],
    }


class RequestFields(TypedDict, total=False):
    """The EmailRequest fields a producer may leave out (each has a schema default)."""

    idempotency_key: str | None
    priority: Priority
    sender: Address | None  # the record's "from"
    reply_to: Address | None
    recipients: list[Recipient]
    content: Content | None
    substitutions: dict[str, str]
    categories: list[str]
    custom_args: dict[str, str]
    asm_group_id: int | None
    send_at: datetime | None
    smtp_probe: bool | None
    track: TrackEvent | None
    sandbox: bool


def email_request(
    request_id: str,
    tenant: str,
    operation: Operation,
    created_at: datetime,
    **fields: Unpack[RequestFields],
) -> EmailRequest:
    """An EmailRequest with every field the caller leaves out at its schema default: the one
    place the ingress, the tracking webhooks, verify jobs and the benchmarks build requests."""
    return {
        "request_id": request_id,
        "tenant": tenant,
        "operation": operation,
        "idempotency_key": fields.get("idempotency_key"),
        "priority": fields.get("priority", "normal"),
        "from": fields.get("sender"),
        "reply_to": fields.get("reply_to"),
        "recipients": fields.get("recipients", []),
        "content": fields.get("content"),
        "substitutions": fields.get("substitutions", {}),
        "categories": fields.get("categories", []),
        "custom_args": fields.get("custom_args", {}),
        "asm_group_id": fields.get("asm_group_id"),
        "send_at": fields.get("send_at"),
        "smtp_probe": fields.get("smtp_probe"),
        "track": fields.get("track"),
        "sandbox": fields.get("sandbox", False),
        "created_at": created_at,
    }


def recipient(email: str, name: str | None = None) -> Recipient:
    """A ``to`` recipient without substitutions or custom args of its own."""
    return {"email": email, "name": name, "kind": "to", "substitutions": {}, "custom_args": {}}
