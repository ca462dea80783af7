"""SendGrid's suppression groups (``/v3/asm/...``, "Advanced Suppression Manager"): the kinds of
mail a tenant sends, which a recipient can leave one by one.

The groups are rows the API owns (``streams/db/asm.py``). Who left a group travels like every
other suppression: a Suppression record with its ``group_id`` on the compacted
``postwire.suppressions`` (a removal is its tombstone), landed by the sinks in
``group_suppressions``, read by the gate and the deliver stage, which drop a group's member from
that group's mail only. SendGrid's "global" suppressions are the tenant's unsubscribes (the
``unsubscribe`` reason of the one suppressions list), which stop every mail.

Shapes and statuses are SendGrid's, including its 201 to a PATCH."""

from __future__ import annotations

from typing import Any, Final

import asyncpg
from aiohttp import web

from streams.api.check import Check
from streams.api.context import Api, Caller, Handler, json_body, problem, reply
from streams.api.sendgrid_suppressions import active
from streams.api.suppression_routes import addresses_body, publish_suppressions
from streams.contract.build import make_suppression, suppression_key
from streams.db import asm
from streams.errors import GroupLimitError, IngressValidationError
from streams.mail.headers import check_line
from streams.mail.unsubscribe import MAX_GROUP

__all__ = [
    "ASM_ROUTES",
    "add_global",
    "add_members",
    "all_members",
    "create_group",
    "delete_global",
    "delete_group",
    "delete_member",
    "get_global",
    "get_group",
    "group_refused",
    "groups_of_address",
    "list_groups",
    "list_members",
    "search_members",
    "update_group",
]

MAX_NAME: Final = 30
MAX_DESCRIPTION: Final = 100
UNSUBSCRIBES: Final = "unsubscribes"  # the SendGrid list of global unsubscribes
REASON: Final = "unsubscribe"


def _view(group: asm.Group) -> dict[str, Any]:
    return {
        "id": group.group_id,
        "name": group.name,
        "description": group.description,
        "is_default": group.is_default,
        "unsubscribes": group.unsubscribes,
        "last_email_sent_at": None,
    }


def _fields(body: object, *, creating: bool) -> tuple[str | None, str | None, bool | None]:
    """(name, description, is_default) of a group body; each None when not given."""
    check = Check()
    root = check.obj(body, "body", required=True) or {}
    name = check.text(root.get("name"), "name")
    if name is not None:
        name = name.strip()
        if not 1 <= len(name) <= MAX_NAME:
            check.fail("name", f"The name must be 1 to {MAX_NAME} characters.")
        check.rule(check_line, "name", name)
    elif creating:
        check.fail("name", "The name parameter is required.")
    description = check.text(root.get("description"), "description")
    if description is not None and len(description) > MAX_DESCRIPTION:
        check.fail("description", f"The description may have {MAX_DESCRIPTION} characters.")
    if description is not None:
        check.rule(check_line, "description", description)
    is_default = root.get("is_default")
    if is_default is not None and not isinstance(is_default, bool):
        check.fail("is_default", "The is_default parameter must be a boolean.")
    if not creating and name is None and description is None and is_default is None:
        check.fail("body", "Give name, description or is_default.")
    check.done()
    return name, description, is_default


def _digits(raw: str) -> bool:
    # str.isdigit alone also takes digits int() refuses (superscripts)
    return raw.isascii() and raw.isdigit() and len(raw) <= 10


def _group_id(request: web.Request) -> int | None:
    raw = request.match_info["group_id"]
    if not _digits(raw) or not 1 <= int(raw) <= MAX_GROUP:
        return None
    return int(raw)


def _email(request: web.Request) -> str:
    """The path's address; a 400 for one with a control character (0x1f separates the parts
    of a suppression's topic key)."""
    address = request.match_info["email"].strip().lower()
    check = Check()
    check.rule(check_line, "email", address)
    check.done()
    return address


def _no_group() -> web.Response:
    return problem(404, ("group_id", "No suppression group of yours has this id."))


def _taken() -> web.Response:
    return problem(400, ("name", "You already have a suppression group of this name."))


async def group_refused(api: Api, tenant: str, group_id: int) -> web.Response | None:
    """The 400 for mail of a group the tenant does not have, else None. A group made since the
    directory's last refresh is found by one primary-key lookup."""
    if api.directory.current.has_group(tenant, group_id):
        return None
    async with api.db.acquire() as conn:
        if await asm.group_exists(conn, tenant, group_id):
            return None
    return problem(400, ("asm.group_id", f"You have no suppression group {group_id}."))


async def create_group(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    name, description, is_default = _fields(await json_body(request), creating=True)
    try:
        async with api.db.acquire() as conn:
            made = await asm.create_group(
                conn, caller.tenant, name or "", description or "", bool(is_default)
            )
    except GroupLimitError as exc:
        raise IngressValidationError([("name", str(exc))]) from exc
    if made is None:
        return _taken()
    return reply(_view(made), 201)


async def list_groups(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    raw = request.query.getall("id", [])
    if any(not _digits(r) or int(r) > MAX_GROUP for r in raw):
        raise IngressValidationError([("id", "Each id must be a group id (a positive integer).")])
    async with api.db.acquire() as conn:
        found = await asm.groups(conn, caller.tenant, [int(r) for r in raw] or None)
    return reply([_view(g) for g in found])


async def get_group(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    group_id = _group_id(request)
    found = None
    if group_id is not None:
        async with api.db.acquire() as conn:
            found = await asm.group(conn, caller.tenant, group_id)
    return _no_group() if found is None else reply(_view(found))


async def update_group(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    group_id = _group_id(request)
    name, description, is_default = _fields(await json_body(request), creating=False)
    if group_id is None:
        return _no_group()
    try:
        async with api.db.acquire() as conn:
            found = await asm.update_group(
                conn,
                caller.tenant,
                group_id,
                name=name,
                description=description,
                is_default=is_default,
            )
    except asyncpg.UniqueViolationError:
        return _taken()
    return _no_group() if found is None else reply(_view(found), 201)


async def delete_group(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    """The group goes, and so do its members' entries on the topic (mail naming the group is
    refused from now on, so they would guard nothing)."""
    group_id = _group_id(request)
    if group_id is None:
        return _no_group()
    async with api.db.acquire() as conn:
        left = await asm.members(conn, caller.tenant, group_id)
        if not await asm.delete_group(conn, caller.tenant, group_id):
            return _no_group()
    # mail naming it is refused from now on, not from the directory's next refresh
    current = api.directory.current
    current.groups[caller.tenant] = current.groups.get(caller.tenant, frozenset()) - {group_id}
    tombstones = [(suppression_key(caller.tenant, m.address, group_id), None) for m in left]
    if tombstones:
        await api.publish(api.settings.topics.suppressions, tombstones)
    return web.Response(status=204)


async def _own_group(api: Api, request: web.Request, caller: Caller) -> int | None:
    group_id = _group_id(request)
    if group_id is None:
        return None
    async with api.db.acquire() as conn:
        return group_id if await asm.group_exists(conn, caller.tenant, group_id) else None


async def add_members(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    group_id = await _own_group(api, request, caller)
    addresses, _reason = addresses_body(await json_body(request))
    if group_id is None:
        return _no_group()
    now = api.clock()
    await publish_suppressions(
        api,
        (
            make_suppression(caller.tenant, a, REASON, "api", now, group_id=group_id)
            for a in addresses
        ),
    )
    return reply({"recipient_emails": addresses}, 201)


async def list_members(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    group_id = await _own_group(api, request, caller)
    if group_id is None:
        return _no_group()
    async with api.db.acquire() as conn:
        found = await asm.members(conn, caller.tenant, group_id)
    return reply([m.address for m in found])


async def search_members(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    group_id = await _own_group(api, request, caller)
    addresses, _reason = addresses_body(await json_body(request))
    if group_id is None:
        return _no_group()
    async with api.db.acquire() as conn:
        found = await asm.members(conn, caller.tenant, group_id, addresses)
    return reply([m.address for m in found])


async def delete_member(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    group_id = await _own_group(api, request, caller)
    if group_id is None:
        return _no_group()
    address = _email(request)
    key = suppression_key(caller.tenant, address, group_id)
    await api.publish(api.settings.topics.suppressions, [(key, None)])
    return web.Response(status=204)


async def all_members(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    async with api.db.acquire() as conn:
        found = await asm.members(conn, caller.tenant)
    return reply(
        [
            {
                "email": m.address,
                "group_id": m.group_id,
                "group_name": m.group_name,
                "created_at": int(m.created_at.timestamp()),
            }
            for m in found
        ]
    )


async def groups_of_address(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    address = _email(request)
    async with api.db.acquire() as conn:
        found = await asm.groups_of_address(conn, caller.tenant, address)
    return reply(
        {
            "suppressions": [
                {
                    "id": g.group_id,
                    "name": g.name,
                    "description": g.description,
                    "is_default": g.is_default,
                    "suppressed": left,
                }
                for g, left in found
            ]
        }
    )


async def add_global(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    """An address already on the list (a bounce, a complaint) keeps its entry: rewriting it as
    an unsubscribe would let a later lift of the unsubscribe send to a hard bounce again."""
    addresses, _reason = addresses_body(await json_body(request))
    now = api.clock()
    async with api.db.acquire() as conn:
        listed = set(await asm.globally_suppressed(conn, caller.tenant, addresses))
    await publish_suppressions(
        api,
        (
            make_suppression(caller.tenant, a, REASON, "api", now)
            for a in addresses
            if a not in listed
        ),
    )
    return reply({"recipient_emails": addresses}, 201)


async def get_global(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    """SendGrid's answer: the address when it is a global unsubscribe, ``{}`` when not."""
    address = _email(request)
    found = await active(api, caller.tenant, UNSUBSCRIBES, [address])
    return reply({"recipient_email": address} if found else {})


async def delete_global(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    """Only an unsubscribe is lifted here; a bounce of the same address stays."""
    address = _email(request)
    if await active(api, caller.tenant, UNSUBSCRIBES, [address]):
        await api.publish(
            api.settings.topics.suppressions, [(suppression_key(caller.tenant, address), None)]
        )
    return web.Response(status=204)


# (method, path, scope, handler), as streams/api/server.py's ROUTES
ASM_ROUTES: Final[tuple[tuple[str, str, str, Handler], ...]] = (
    ("POST", "/v3/asm/groups", "send", create_group),
    ("GET", "/v3/asm/groups", "read", list_groups),
    ("GET", "/v3/asm/groups/{group_id}", "read", get_group),
    ("PATCH", "/v3/asm/groups/{group_id}", "send", update_group),
    ("DELETE", "/v3/asm/groups/{group_id}", "send", delete_group),
    ("POST", "/v3/asm/groups/{group_id}/suppressions", "send", add_members),
    ("GET", "/v3/asm/groups/{group_id}/suppressions", "read", list_members),
    ("POST", "/v3/asm/groups/{group_id}/suppressions/search", "read", search_members),
    ("DELETE", "/v3/asm/groups/{group_id}/suppressions/{email}", "send", delete_member),
    ("GET", "/v3/asm/suppressions", "read", all_members),
    ("POST", "/v3/asm/suppressions/global", "send", add_global),
    ("GET", "/v3/asm/suppressions/global/{email}", "read", get_global),
    ("DELETE", "/v3/asm/suppressions/global/{email}", "send", delete_global),
    ("GET", "/v3/asm/suppressions/{email}", "read", groups_of_address),
)
