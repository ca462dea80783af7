"""Suppression groups (SendGrid's ASM) in PostgreSQL: the groups a tenant defines, which the API
owns (``asm_groups``), and who left each one, which the sinks land from the compacted
``postwire.suppressions`` (``group_suppressions``). Every statement names the tenant, so a
group id of another tenant reads as no group at all."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from streams.errors import GroupLimitError

__all__ = [
    "MAX_GROUPS",
    "Group",
    "GroupMember",
    "create_group",
    "delete_group",
    "globally_suppressed",
    "group",
    "group_exists",
    "groups",
    "groups_of_address",
    "members",
    "update_group",
]

MAX_GROUPS: Final = 200  # per tenant, SendGrid's bound

_GROUPS: Final = (
    "SELECT g.group_id, g.name, g.description, g.is_default,"
    " (SELECT count(*) FROM group_suppressions s WHERE s.tenant_id = g.tenant_id"
    "  AND s.group_id = g.group_id AND s.removed_at IS NULL) AS unsubscribes"
    " FROM asm_groups g WHERE g.tenant_id = $1"
    " AND ($2::int[] IS NULL OR g.group_id = ANY($2::int[])) ORDER BY g.group_id"
)


@dataclass(frozen=True)
class Group:
    group_id: int
    name: str
    description: str
    is_default: bool
    unsubscribes: int = 0


@dataclass(frozen=True)
class GroupMember:
    address: str
    group_id: int
    group_name: str
    created_at: datetime


def _group(r: Any) -> Group:
    return Group(r["group_id"], r["name"], r["description"], r["is_default"], r["unsubscribes"])


async def groups(conn: Any, tenant: str, ids: list[int] | None = None) -> list[Group]:
    """The tenant's groups (those of ``ids`` only, when given), by id."""
    rows = await conn.fetch(_GROUPS, tenant, ids)
    return [_group(r) for r in rows]


async def group(conn: Any, tenant: str, group_id: int) -> Group | None:
    found = await groups(conn, tenant, [group_id])
    return found[0] if found else None


async def group_exists(conn: Any, tenant: str, group_id: int) -> bool:
    """One primary-key lookup: a group the API just created, before the directory has it."""
    found = await conn.fetchval(
        "SELECT 1 FROM asm_groups WHERE group_id = $1 AND tenant_id = $2", group_id, tenant
    )
    return found is not None


async def _undefault(conn: Any, tenant: str) -> None:
    await conn.execute(
        "UPDATE asm_groups SET is_default = false, updated_at = now()"
        " WHERE tenant_id = $1 AND is_default",
        tenant,
    )


async def create_group(
    conn: Any, tenant: str, name: str, description: str, is_default: bool
) -> Group | None:
    """The new group; None when the tenant has a group of that name. A new default group takes
    the place of the old one (one default per tenant). GroupLimitError past ``MAX_GROUPS``."""
    async with conn.transaction():
        # the tenant's row serializes its creations, so two at once cannot both pass the bound
        await conn.execute("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant)
        count = await conn.fetchval("SELECT count(*) FROM asm_groups WHERE tenant_id = $1", tenant)
        if count >= MAX_GROUPS:
            raise GroupLimitError(f"a tenant has at most {MAX_GROUPS} suppression groups")
        if is_default:
            await _undefault(conn, tenant)
        row = await conn.fetchrow(
            "INSERT INTO asm_groups (tenant_id, name, description, is_default)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, name) DO NOTHING"
            " RETURNING group_id, name, description, is_default, 0::bigint AS unsubscribes",
            tenant,
            name,
            description,
            is_default,
        )
    return None if row is None else _group(row)


async def update_group(
    conn: Any,
    tenant: str,
    group_id: int,
    *,
    name: str | None,
    description: str | None,
    is_default: bool | None,
) -> Group | None:
    """The group with the fields given changed; None when the tenant has no such group.
    asyncpg.UniqueViolationError when the new name is another group's."""
    async with conn.transaction():
        # as in create_group: the tenant's row serializes its changes of the default group
        await conn.execute("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant)
        if is_default:
            await _undefault(conn, tenant)
        done = await conn.execute(
            "UPDATE asm_groups SET name = coalesce($3, name),"
            " description = coalesce($4, description), is_default = coalesce($5, is_default),"
            " updated_at = now() WHERE tenant_id = $1 AND group_id = $2",
            tenant,
            group_id,
            name,
            description,
            is_default,
        )
        if done == "UPDATE 0":
            return None
        return await group(conn, tenant, group_id)


async def delete_group(conn: Any, tenant: str, group_id: int) -> bool:
    done = await conn.execute(
        "DELETE FROM asm_groups WHERE tenant_id = $1 AND group_id = $2", tenant, group_id
    )
    return bool(done != "DELETE 0")


async def members(
    conn: Any, tenant: str, group_id: int | None = None, addresses: list[str] | None = None
) -> list[GroupMember]:
    """Who left the tenant's groups (of ``group_id``, of ``addresses``, when given), newest
    first; members of a deleted group are not shown."""
    rows = await conn.fetch(
        "SELECT s.address, s.group_id, g.name, s.created_at FROM group_suppressions s"
        " JOIN asm_groups g ON g.group_id = s.group_id AND g.tenant_id = s.tenant_id"
        " WHERE s.tenant_id = $1 AND s.removed_at IS NULL"
        " AND ($2::int IS NULL OR s.group_id = $2)"
        " AND ($3::text[] IS NULL OR s.address = ANY($3::text[]))"
        " ORDER BY s.created_at DESC, s.address",
        tenant,
        group_id,
        addresses,
    )
    return [GroupMember(r["address"], r["group_id"], r["name"], r["created_at"]) for r in rows]


async def globally_suppressed(conn: Any, tenant: str, addresses: list[str]) -> list[str]:
    """Which of ``addresses`` are on the tenant's global list, for any reason."""
    rows = await conn.fetch(
        "SELECT address FROM suppressions WHERE tenant_id = $1 AND removed_at IS NULL"
        " AND address = ANY($2::text[])",
        tenant,
        addresses,
    )
    return [r["address"] for r in rows]


async def groups_of_address(conn: Any, tenant: str, address: str) -> list[tuple[Group, bool]]:
    """Every group of the tenant, each with whether ``address`` left it."""
    left = {m.group_id for m in await members(conn, tenant, addresses=[address])}
    return [(g, g.group_id in left) for g in await groups(conn, tenant)]
