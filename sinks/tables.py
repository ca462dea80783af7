"""Per-table mapping from decoded records to rows (pure), and the upsert statement of each."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from streams.contract.build import parse_suppression_key
from streams.contract.records import (
    DeliveryEvent,
    EmailRequest,
    Rejection,
    Suppression,
    VerificationResult,
    VerifyTask,
)
from streams.kafka.records import SourcePosition
from streams.obs.redact import scrub_key_bytes, scrub_keys
from streams.settings import Settings

__all__ = [
    "REJECTION_COLUMNS",
    "Row",
    "TableSpec",
    "rejection_row",
    "sink_failure_row",
    "sink_feeds",
    "table_specs",
]

Row = tuple[Any, ...]


def _no_tombstones(key: bytes | None, src: SourcePosition) -> Row | None:
    raise ValueError("a tombstone (null value) where a record was expected")


@dataclass(frozen=True)
class TableSpec:
    table: str
    topic: str
    record: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    # the record's row (None: this record has no row here); each row function takes its record's
    # TypedDict, so mypy checks the fields it reads
    to_row: Callable[[Any, SourcePosition], Row | None]
    # columns overwritten when a row with the same key arrives again; empty: first write wins
    update: tuple[str, ...] = ()
    # with ``update``: only overwrite a row whose ``newest`` column is not newer (out-of-order
    # and replayed records never roll a row back); within a batch the newest row wins
    newest: str | None = None
    # the row for a null value (a tombstone on a compacted topic), from the record key
    tombstone: Callable[[bytes | None, SourcePosition], Row | None] = _no_tombstones


def _row_of_request(
    r: EmailRequest | VerifyTask, src: SourcePosition, recipients: int, created_at: datetime
) -> Row:
    return (
        r["request_id"],
        r["tenant"],
        r["operation"],
        r["idempotency_key"],
        r["priority"],
        recipients,
        r["categories"],
        created_at,
        src.topic,
        src.partition,
        src.offset,
    )


def _request_row(r: EmailRequest, src: SourcePosition) -> Row:
    return _row_of_request(r, src, len(r["recipients"]), r["created_at"])


def _verify_request_row(r: VerifyTask, src: SourcePosition) -> Row:
    """An admitted verify request's row, from any of its VerifyTasks (the first one wins)."""
    return _row_of_request(r, src, r["recipient_count"], r["requested_at"])


def _verification_row(r: VerificationResult, _src: SourcePosition) -> Row:
    return (
        r["request_id"],
        r["address"],
        r["tenant"],
        r["normalized"],
        r["is_reachable"],
        r["score"],
        r["reasons"],
        orjson.dumps(r).decode(),
        r["cached"],
        r["verified_at"],
        r["requested_at"],
    )


_EVENT_DETAIL = (
    "smtp",
    "bounce_class",
    "retry_after_ms",
    "attempt",
    "url",
    "user_agent",
    "ip",
    "categories",
    "custom_args",
    "asm_group_id",
)


def _event_row(r: DeliveryEvent, _src: SourcePosition) -> Row:
    fields: Mapping[str, object] = r
    detail = {k: fields[k] for k in _EVENT_DETAIL if fields.get(k) not in (None, [], {})}
    return (
        r["event_id"],
        r["tenant"],
        r["type"],
        r["request_id"],
        r["message_id"],
        r["recipient"],
        r["reason"],
        orjson.dumps(detail).decode(),
        r["occurred_at"],
    )


REJECTION_COLUMNS = (
    "source_topic",
    "source_partition",
    "source_offset",
    "stage",
    "error_code",
    "error",
    "tenant_id",
    "raw",
    "rejected_at",
)


def rejection_row(r: Rejection, _src: SourcePosition | None = None) -> Row:
    return (
        r["source_topic"],
        r["source_partition"],
        r["source_offset"],
        r["stage"],
        r["error_code"],
        r["error"],
        r["tenant"],
        r["raw"],
        r["rejected_at"],
    )


def sink_failure_row(
    src: SourcePosition, stage: str, code: str, error: str, raw: bytes, now: datetime
) -> Row:
    """A record a sink could not map lands in ``rejections`` in the same transaction, less
    anything shaped like an API key."""
    return (
        src.topic,
        src.partition,
        src.offset,
        stage,
        code,
        scrub_keys(error),
        None,
        scrub_key_bytes(raw),
        now,
    )


def _message_row(r: DeliveryEvent, _src: SourcePosition) -> Row | None:
    """Latest state per message and recipient: every event about one becomes its state."""
    if r["message_id"] is None or r["recipient"] is None:
        return None
    smtp = r["smtp"]
    reply = None
    if smtp is not None:
        enhanced = f" {smtp['enhanced_code']}" if smtp["enhanced_code"] else ""
        reply = f"{smtp['code']}{enhanced} {smtp['message']}".strip()
    retry_ms = r["retry_after_ms"]
    next_attempt = (
        r["occurred_at"] + timedelta(milliseconds=retry_ms)
        if r["type"] == "deferred" and retry_ms is not None
        else None
    )
    return (
        r["message_id"],
        r["recipient"],
        r["tenant"],
        r["request_id"] or "",
        r["type"],
        r["attempt"],
        reply,
        r["reason"],
        r["bounce_class"],
        next_attempt,
        r["occurred_at"],
    )


# what a suppression row says beyond its key (global, or of a group), each overwritten by a newer
# record or tombstone
_SUPPRESSION_STATE: Final = ("reason", "source", "detail", "created_at", "removed_at", "updated_at")


def _suppression_row(r: Suppression, _src: SourcePosition) -> Row | None:
    if r["group_id"] is not None:
        return None  # a group's member: group_suppressions
    at = r["created_at"]
    return (r["tenant"], r["address"].lower(), r["reason"], r["source"], r["detail"], at, None, at)


def _group_suppression_row(r: Suppression, _src: SourcePosition) -> Row | None:
    if r["group_id"] is None:
        return None
    at, group = r["created_at"], r["group_id"]
    address = r["address"].lower()
    return (r["tenant"], group, address, r["reason"], r["source"], r["detail"], at, None, at)


def _removed(key: bytes | None, src: SourcePosition) -> tuple[str, str, int | None, datetime]:
    parsed = parse_suppression_key(key)
    if parsed is None:
        raise ValueError(
            f"a suppression tombstone needs a key tenant\\x1faddress[\\x1fgroup], not {key!r}"
        )
    tenant, address, group = parsed
    return tenant, address, group, datetime.fromtimestamp(src.timestamp_ms / 1000, UTC)


def _suppression_removed(key: bytes | None, src: SourcePosition) -> Row | None:
    tenant, address, group, at = _removed(key, src)
    if group is not None:
        return None
    return (tenant, address, "removed", "tombstone", None, at, at, at)


def _group_suppression_removed(key: bytes | None, src: SourcePosition) -> Row | None:
    tenant, address, group, at = _removed(key, src)
    if group is None:
        return None
    return (tenant, group, address, "removed", "tombstone", None, at, at, at)


def table_specs(settings: Settings) -> dict[str, TableSpec]:
    t = settings.topics
    specs = [
        TableSpec(
            table="requests",
            topic=t.accepted,
            record="EmailRequest",
            columns=(
                "request_id",
                "tenant_id",
                "operation",
                "idempotency_key",
                "priority",
                "recipient_count",
                "categories",
                "created_at",
                "source_topic",
                "source_partition",
                "source_offset",
            ),
            key=("request_id",),
            to_row=_request_row,
        ),
        TableSpec(
            table="verifications",
            topic=t.verifications,
            record="VerificationResult",
            columns=(
                "request_id",
                "address",
                "tenant_id",
                "normalized",
                "is_reachable",
                "score",
                "reasons",
                "result",
                "cached",
                "verified_at",
                "requested_at",
            ),
            key=("request_id", "address"),
            to_row=_verification_row,
        ),
        TableSpec(
            table="events",
            topic=t.events,
            record="DeliveryEvent",
            columns=(
                "event_id",
                "tenant_id",
                "type",
                "request_id",
                "message_id",
                "recipient",
                "reason",
                "detail",
                "occurred_at",
            ),
            key=("event_id",),
            to_row=_event_row,
        ),
        TableSpec(
            table="messages",
            topic=t.events,
            record="DeliveryEvent",
            columns=(
                "message_id",
                "recipient",
                "tenant_id",
                "request_id",
                "state",
                "attempts",
                "last_reply",
                "reason",
                "bounce_class",
                "next_attempt_at",
                "updated_at",
            ),
            key=("message_id", "recipient"),
            to_row=_message_row,
            update=(
                "state",
                "attempts",
                "last_reply",
                "reason",
                "bounce_class",
                "next_attempt_at",
                "updated_at",
            ),
            newest="updated_at",
        ),
        TableSpec(
            table="suppressions",
            topic=t.suppressions,
            record="Suppression",
            columns=("tenant_id", "address", *_SUPPRESSION_STATE),
            key=("tenant_id", "address"),
            to_row=_suppression_row,
            update=_SUPPRESSION_STATE,
            newest="updated_at",
            tombstone=_suppression_removed,
        ),
        TableSpec(
            table="group_suppressions",
            topic=t.suppressions,
            record="Suppression",
            columns=("tenant_id", "group_id", "address", *_SUPPRESSION_STATE),
            key=("tenant_id", "group_id", "address"),
            to_row=_group_suppression_row,
            update=_SUPPRESSION_STATE,
            newest="updated_at",
            tombstone=_group_suppression_removed,
        ),
        TableSpec(
            table="rejections",
            topic=t.rejections,
            record="Rejection",
            columns=REJECTION_COLUMNS,
            key=("source_topic", "source_partition", "source_offset"),
            to_row=rejection_row,
        ),
    ]
    return {s.table: s for s in specs}


def sink_feeds(settings: Settings) -> dict[str, TableSpec]:
    """Every topic-to-table feed the sinks run, by name (each its own consumer group): one per
    table, plus ``requests.verify``: admitted verify requests reach the requests table from their
    VerifyTasks, since the gate writes them to no other topic."""
    specs = table_specs(settings)
    feeds = dict(specs)
    feeds["requests.verify"] = replace(
        specs["requests"],
        topic=settings.topics.verify,
        record="VerifyTask",
        to_row=_verify_request_row,
    )
    return feeds
