"""SendGrid's suppression endpoints over the one suppressions table:
``/v3/suppression/{bounces,blocks,spam_reports,invalid_emails,unsubscribes}``.

postwire keeps one list per tenant, each entry with its reason; SendGrid shows five. Each kind
here is the entries whose reason it covers (``KINDS``; bounces take every other reason, so that
each entry shows in exactly one list). Reads are the sinks' table; a removal is a tombstone on the
compacted ``postwire.suppressions``, as every other writer's, and only for an entry of the kind
named (deleting a bounce never lifts an unsubscribe).

Rows are SendGrid's shape: ``created`` (epoch seconds), ``email``, ``reason`` (the reply or note
that caused it, else the reason), ``status`` (the enhanced status code in it, else "").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from streams.api import params
from streams.api.check import Check
from streams.api.context import Api, Caller, json_body, problem, reply
from streams.contract.build import suppression_key
from streams.errors import IngressValidationError
from streams.mail.replies import parse_enhanced

__all__ = [
    "KINDS",
    "NAMES",
    "active",
    "delete_kind",
    "delete_one",
    "get_one",
    "kind_of",
    "list_kind",
    "row",
    "time_range",
]

KINDS: Final[dict[str, frozenset[str]]] = {
    "blocks": frozenset({"policy", "blocked", "content_rejected", "sender_rejected"}),
    "spam_reports": frozenset({"complaint", "spamreport"}),
    "invalid_emails": frozenset({"invalid", "invalid_email", "syntax"}),
    "unsubscribes": frozenset({"unsubscribe"}),
}
BOUNCES: Final = "bounces"
NAMES: Final = (BOUNCES, *KINDS)
MAX_PAGE: Final = 500
MAX_DELETE: Final = 1000
MAX_OFFSET: Final = 2**31 - 1
LAST_SECOND: Final = 253402300799  # 9999-12-31T23:59:59Z, the last second datetime holds
_ALL_OTHERS: Final = frozenset().union(*KINDS.values())
# $2: the reasons of the kinds but bounces; $3: whether the kind is one of them (bounces are the
# rest), so one statement serves every kind
_LIST_SQL: Final = """
SELECT address, reason, detail, created_at FROM suppressions
WHERE tenant_id = $1 AND removed_at IS NULL AND (reason = ANY($2::text[])) = $3::bool
  AND created_at >= $4::timestamptz AND created_at < $5::timestamptz + interval '1 second'
ORDER BY created_at DESC, address LIMIT $6::int OFFSET $7::int
"""
_ONE_SQL: Final = """
SELECT address, reason, detail, created_at FROM suppressions
WHERE tenant_id = $1 AND removed_at IS NULL AND (reason = ANY($2::text[])) = $3::bool
  AND address = $4
"""
_ACTIVE_SQL: Final = """
SELECT address FROM suppressions
WHERE tenant_id = $1 AND removed_at IS NULL AND (reason = ANY($2::text[])) = $3::bool
  AND ($4::text[] IS NULL OR address = ANY($4::text[]))
"""


def kind_of(reason: str) -> str:
    """The SendGrid list a suppression with ``reason`` shows in."""
    for kind, reasons in KINDS.items():
        if reason in reasons:
            return kind
    return BOUNCES


def _of_kind(kind: str) -> tuple[list[str], bool]:
    """$2 and $3 of the statements: the reasons, and whether the kind has them."""
    if kind == BOUNCES:
        return sorted(_ALL_OTHERS), False
    return sorted(KINDS[kind]), True


def row(found: Mapping[str, Any]) -> dict[str, Any]:
    """A suppressions row in SendGrid's shape."""
    detail = found["detail"] or ""
    status = parse_enhanced(detail) if detail else None
    return {
        "created": int(found["created_at"].timestamp()),
        "email": found["address"],
        "reason": detail or found["reason"],
        "status": status or "",
    }


def _epoch(query: Mapping[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) > LAST_SECOND:
        raise IngressValidationError([(name, f"must be UNIX seconds, 0 to {LAST_SECOND}")])
    return datetime.fromtimestamp(int(raw), UTC)


def time_range(query: Mapping[str, str]) -> tuple[datetime, datetime]:
    """``start_time`` and ``end_time`` (UNIX seconds, both inclusive; open when not given)."""
    start = _epoch(query, "start_time") or datetime(1970, 1, 1, tzinfo=UTC)
    end = _epoch(query, "end_time") or datetime.fromtimestamp(LAST_SECOND, UTC)
    if end < start:
        raise IngressValidationError([("end_time", "is before start_time")])
    return start, end


def _kind(request: web.Request) -> str:
    # the list is the path's last segment before any {email}
    parts = request.path.split("/")
    return parts[3] if len(parts) > 3 and parts[3] in NAMES else BOUNCES


async def list_kind(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    kind = _kind(request)
    start, end = time_range(request.query)
    limit = params.limit(request.query, default=MAX_PAGE, maximum=MAX_PAGE)
    offset = params.offset(request.query)
    if offset > MAX_OFFSET:
        raise IngressValidationError([("offset", f"must be at most {MAX_OFFSET}")])
    async with api.db.acquire() as conn:
        rows = await conn.fetch(
            _LIST_SQL,
            caller.tenant,
            *_of_kind(kind),
            start,
            end,
            limit,
            offset,
        )
    return reply([row(r) for r in rows])


async def active(api: Api, tenant: str, kind: str, addresses: list[str] | None) -> list[str]:
    """The addresses of ``kind`` on the tenant's list (of ``addresses``, or all)."""
    async with api.db.acquire() as conn:
        found = await conn.fetch(_ACTIVE_SQL, tenant, *_of_kind(kind), addresses)
    return [r["address"] for r in found]


async def get_one(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    kind = _kind(request)
    async with api.db.acquire() as conn:
        found = await conn.fetchrow(
            _ONE_SQL, caller.tenant, *_of_kind(kind), request.match_info["email"].strip().lower()
        )
    if found is None:
        return problem(404, ("email", f"this address is not in {kind}"))
    return reply([row(found)])


async def _remove(api: Api, tenant: str, addresses: list[str]) -> None:
    if addresses:
        tombstones = [(suppression_key(tenant, a), None) for a in addresses]
        await api.publish(api.settings.topics.suppressions, tombstones)


async def delete_one(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    kind = _kind(request)
    address = request.match_info["email"].strip().lower()
    found = await active(api, caller.tenant, kind, [address])
    if not found:
        return problem(404, ("email", f"this address is not in {kind}"))
    await _remove(api, caller.tenant, found)
    return web.Response(status=204)


def delete_body(body: object) -> list[str] | None:
    """The addresses of ``{"emails": [...]}``, or None for ``{"delete_all": true}``."""
    check = Check()
    root = check.obj(body, "body", required=True) or {}
    if root.get("delete_all") is True:
        if "emails" in root:
            check.fail("emails", "Give delete_all or emails, not both.")
        check.done()
        return None
    items = check.items(root.get("emails"), "emails")
    if not items and not check.errors:
        check.fail("emails", 'Give {"delete_all": true} or a non-empty emails array.')
    if len(items) > MAX_DELETE:
        check.fail("emails", f"At most {MAX_DELETE} addresses per call.")
    found = []
    for i, value in enumerate(items[:MAX_DELETE]):
        if not isinstance(value, str) or "@" not in value:
            check.fail(f"emails.{i}", "Does not contain a valid address.")
        else:
            found.append(value.strip().lower())
    check.done()
    return list(dict.fromkeys(found))


async def delete_kind(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    kind = _kind(request)
    addresses = delete_body(await json_body(request))
    await _remove(api, caller.tenant, await active(api, caller.tenant, kind, addresses))
    return web.Response(status=204)
