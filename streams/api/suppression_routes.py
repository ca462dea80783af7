"""A tenant's suppression list: read from PostgreSQL, changed through the compacted
``postwire.suppressions`` topic like every other writer (the gate, deliver, the CLI)."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from streams.api import params, queries
from streams.api.check import Check
from streams.api.context import Api, Caller, json_body, problem, reply
from streams.contract.build import make_suppression, record_key, suppression_key
from streams.contract.records import Suppression
from streams.mail.headers import check_line

__all__ = [
    "add_suppressions",
    "addresses_body",
    "get_suppression",
    "list_suppressions",
    "publish_suppressions",
    "remove_suppression",
]

MAX_ADD = 1000


async def list_suppressions(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    limit = params.limit(request.query)
    async with api.db.acquire() as conn:
        rows, last = await queries.suppression_page(
            conn, caller.tenant, after=request.query.get("after"), limit=limit
        )
    return reply({"suppressions": rows, "next_after": last if len(rows) == limit else None})


async def get_suppression(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    async with api.db.acquire() as conn:
        found = await queries.suppression(conn, caller.tenant, request.match_info["email"])
    if found is None:
        return problem(404, ("email", "this address is not suppressed"))
    return reply(found)


def addresses_body(body: object) -> tuple[list[str], str]:
    """(addresses, reason) of ``{"emails" | "recipient_emails": [...], "reason"?}``."""
    check = Check()
    root = check.obj(body, "body", required=True) or {}
    field = "recipient_emails" if "recipient_emails" in root else "emails"
    items = check.items(root.get(field), field)
    if not items and not check.errors:
        check.fail(field, "The emails array is required and may not be empty.")
    if len(items) > MAX_ADD:
        check.fail(field, f"At most {MAX_ADD} addresses per call.")
    found = []
    for i, value in enumerate(items[:MAX_ADD]):
        if not isinstance(value, str) or "@" not in value:
            check.fail(f"{field}.{i}", "Does not contain a valid address.")
        elif check.rule(check_line, f"{field}.{i}", value):
            # no control character: 0x1f separates the parts of a suppression's topic key
            found.append(value.strip().lower())
    reason = check.text(root.get("reason"), "reason") or "manual"
    check.done()
    return list(dict.fromkeys(found)), reason


async def publish_suppressions(api: Api, records: Iterable[Suppression]) -> None:
    """``records`` onto the compacted topic, each under its own key (global, or of a group)."""
    encoded = [(record_key(r), api.codec.encode("Suppression", r)) for r in records]
    await api.publish(api.settings.topics.suppressions, encoded)


async def add_suppressions(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    addresses, reason = addresses_body(await json_body(request))
    now = api.clock()
    await publish_suppressions(
        api, (make_suppression(caller.tenant, a, reason, "api", now) for a in addresses)
    )
    return reply({"recipient_emails": addresses}, 201)


async def remove_suppression(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    """A tombstone: later sends to the address go out again."""
    address = request.match_info["email"].strip().lower()
    await api.publish(
        api.settings.topics.suppressions, [(suppression_key(caller.tenant, address), None)]
    )
    return web.Response(status=204)
