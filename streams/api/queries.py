"""The API's reads from PostgreSQL. Every query is scoped to one tenant: a tenant never sees
another's rows, even with a guessed id."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

__all__ = [
    "JobRow",
    "event_page",
    "insert_jobs",
    "job",
    "job_results",
    "message_timeline",
    "own_messages",
    "suppression",
    "suppression_page",
    "verification_rows",
]

Json = dict[str, Any]


def _like_prefix(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}.%"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _event(r: Any) -> Json:
    return {
        "event_id": r["event_id"],
        "type": r["type"],
        "message_id": r["message_id"],
        "request_id": r["request_id"],
        "email": r["recipient"],
        "reason": r["reason"],
        "occurred_at": _iso(r["occurred_at"]),
        **orjson.loads(r["detail"]),
    }


async def own_messages(conn: Any, tenant: str, message_ids: Sequence[str]) -> set[str]:
    """Which of ``message_ids`` name messages of ``tenant`` (rows in its messages)."""
    rows = await conn.fetch(
        "SELECT DISTINCT message_id FROM messages WHERE tenant_id = $1"
        " AND message_id = ANY($2::text[])",
        tenant,
        list(message_ids),
    )
    return {r["message_id"] for r in rows}


async def message_timeline(conn: Any, tenant: str, message_id: str) -> Json | None:
    """State and event timeline per recipient of a message (all its personalizations)."""
    args = (tenant, message_id, _like_prefix(message_id))
    states = await conn.fetch(
        "SELECT message_id, recipient, state, attempts, last_reply, reason, bounce_class, "
        "next_attempt_at, updated_at FROM messages "
        "WHERE tenant_id = $1 AND (message_id = $2 OR message_id LIKE $3) "
        "ORDER BY message_id, recipient",
        *args,
    )
    events = await conn.fetch(
        "SELECT event_id, type, request_id, message_id, recipient, reason, detail, occurred_at "
        "FROM events WHERE tenant_id = $1 AND (message_id = $2 OR message_id LIKE $3) "
        "ORDER BY occurred_at, seq",
        *args,
    )
    if not states and not events:
        return None
    recipients: dict[tuple[str, str], Json] = {}
    for r in states:
        recipients[(r["message_id"], r["recipient"])] = {
            "email": r["recipient"],
            "message_id": r["message_id"],
            "state": r["state"],
            "attempts": r["attempts"],
            "last_reply": r["last_reply"],
            "reason": r["reason"],
            "bounce_class": r["bounce_class"],
            "next_attempt_at": _iso(r["next_attempt_at"]),
            "updated_at": _iso(r["updated_at"]),
            "events": [],
        }
    general: list[Json] = []
    for r in events:
        found = recipients.get((r["message_id"], r["recipient"] or ""))
        (found["events"] if found else general).append(_event(r))
    return {"message_id": message_id, "recipients": list(recipients.values()), "events": general}


async def event_page(
    conn: Any,
    tenant: str,
    *,
    after_seq: int | None,
    since: datetime | None,
    types: list[str],
    limit: int,
) -> tuple[list[Json], int | None]:
    """A page of events in landing order and the cursor of its last row."""
    rows = await conn.fetch(
        "SELECT seq, event_id, type, request_id, message_id, recipient, reason, detail, "
        "occurred_at FROM events WHERE tenant_id = $1 AND seq > $2 "
        "AND ($3::timestamptz IS NULL OR occurred_at >= $3) "
        "AND (cardinality($4::text[]) = 0 OR type = ANY($4)) ORDER BY seq LIMIT $5",
        tenant,
        after_seq or 0,
        since,
        types,
        limit,
    )
    return [_event(r) for r in rows], (rows[-1]["seq"] if rows else after_seq)


def _suppression(r: Any) -> Json:
    return {
        "email": r["address"],
        "reason": r["reason"],
        "source": r["source"],
        "detail": r["detail"],
        "created_at": _iso(r["created_at"]),
    }


async def suppression_page(
    conn: Any, tenant: str, *, after: str | None, limit: int
) -> tuple[list[Json], str | None]:
    """Active suppressions in address order, from after ``after``."""
    rows = await conn.fetch(
        "SELECT address, reason, source, detail, created_at FROM suppressions "
        "WHERE tenant_id = $1 AND removed_at IS NULL AND address > $2 "
        "ORDER BY address LIMIT $3",
        tenant,
        after or "",
        limit,
    )
    return [_suppression(r) for r in rows], (rows[-1]["address"] if rows else None)


async def suppression(conn: Any, tenant: str, address: str) -> Json | None:
    row = await conn.fetchrow(
        "SELECT address, reason, source, detail, created_at FROM suppressions "
        "WHERE tenant_id = $1 AND address = $2 AND removed_at IS NULL",
        tenant,
        address.lower(),
    )
    return None if row is None else _suppression(row)


JobRow = tuple[str, str, int, list[str], bool | None]
"""tenant, job id, total, request ids, SMTP probe."""


async def insert_jobs(conn: Any, rows: Sequence[JobRow]) -> None:
    """Record jobs in one transaction; a retried POST with the same Idempotency-Key finds its
    job there already."""
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO verify_jobs (tenant_id, job_id, total, request_ids, smtp_probe) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id) DO NOTHING",
            rows,
        )


async def job(conn: Any, tenant: str, job_id: str) -> Json | None:
    """A job's progress: total, done, and counts per verdict."""
    head = await conn.fetchrow(
        "SELECT total, request_ids, created_at FROM verify_jobs "
        "WHERE job_id = $1 AND tenant_id = $2",
        job_id,
        tenant,
    )
    if head is None:
        return None
    counts = await conn.fetch(
        "SELECT is_reachable, count(*) AS n, max(verified_at) AS latest FROM verifications "
        "WHERE request_id = ANY($1) AND tenant_id = $2 GROUP BY is_reachable",
        head["request_ids"],
        tenant,
    )
    by_verdict = {r["is_reachable"]: r["n"] for r in counts}
    done = sum(by_verdict.values())
    latest = max((r["latest"] for r in counts), default=None)
    return {
        "id": job_id,
        "status": "done" if done >= head["total"] else "pending",
        "total": head["total"],
        "done": done,
        "counts": by_verdict,
        "created_at": _iso(head["created_at"]),
        "request_ids": list(head["request_ids"]),
        # when its newest result was written: with the counts, the version of every page
        "latest": None if latest is None else _iso(latest),
    }


def _result(r: Any) -> Json:
    result = orjson.loads(r["result"])
    for private in ("tenant", "request_id", "address"):
        result.pop(private, None)
    return {"email": r["address"], **result}


async def job_results(
    conn: Any, tenant: str, request_ids: list[str], *, offset: int, limit: int
) -> list[Json]:
    rows = await conn.fetch(
        "SELECT request_id, address, result FROM verifications "
        "WHERE request_id = ANY($1) AND tenant_id = $2 "
        "ORDER BY request_id, address OFFSET $3 LIMIT $4",
        request_ids,
        tenant,
        offset,
        limit,
    )
    return [_result(r) for r in rows]


async def verification_rows(conn: Any, request_ids: list[str]) -> dict[str, Json]:
    """The result of each single-address request that has one (the waiter's poll)."""
    rows = await conn.fetch(
        "SELECT request_id, address, result FROM verifications WHERE request_id = ANY($1)",
        request_ids,
    )
    return {r["request_id"]: _result(r) for r in rows}
