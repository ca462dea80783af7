"""API keys as operators manage them: create (the key is shown once; stored are its sha256 and a
copy sealed under the server secret), list (never the key), revoke.

Authentication itself is in ``streams/db/tenants.py``: keys are found by the sha256 of what the
caller presented, so no secret is ever compared with ``==`` (a timing difference could at most
reveal bits of a digest, which does not help anyone find a key). Revocation reaches the gate and the
HTTP ingress with their next directory refresh, every ``POSTWIRE_DIRECTORY_REFRESH`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from streams.db.tenants import create_api_key
from streams.errors import UnknownKeyError, UnknownScopeError, UnknownTenantError
from streams.secret import ServerSecret

__all__ = ["SCOPES", "KeyInfo", "create_key", "list_keys", "parse_scopes", "revoke_key"]

# what a key may be used for; tenants.SCOPE_OF_OPERATION maps request operations onto them
SCOPES = ("send", "verify", "read")


def parse_scopes(text: str) -> tuple[str, ...]:
    """``"verify, send"`` -> ``("send", "verify")``: known names only, once each, SCOPES order."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UnknownScopeError("--scopes needs at least one of send, verify, read")
    unknown = [name for name in names if name not in SCOPES]
    if unknown:
        raise UnknownScopeError(f"unknown scope {unknown[0]!r}; the scopes are send, verify, read")
    return tuple(scope for scope in SCOPES if scope in names)


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant_id: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "tenant": self.tenant_id,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def _no_tenant(tenant_id: str) -> UnknownTenantError:
    return UnknownTenantError(f"no tenant {tenant_id!r}; create it with `postwire tenant add`")


async def create_key(
    conn: Any, tenant_id: str, scopes: tuple[str, ...] = SCOPES, *, secret: ServerSecret
) -> tuple[str, str]:
    """A new key for an existing tenant; returns (key_id, key). The key is kept nowhere in
    plaintext."""
    try:
        return await create_api_key(conn, tenant_id, scopes, secret=secret)
    except asyncpg.ForeignKeyViolationError as exc:
        raise _no_tenant(tenant_id) from exc


async def list_keys(conn: Any, tenant_id: str) -> list[KeyInfo]:
    if not await conn.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant_id):
        raise _no_tenant(tenant_id)
    rows = await conn.fetch(
        "SELECT key_id, tenant_id, scopes, created_at, revoked_at FROM api_keys"
        " WHERE tenant_id = $1 ORDER BY created_at, key_id",
        tenant_id,
    )
    return [
        KeyInfo(r["key_id"], r["tenant_id"], tuple(r["scopes"]), r["created_at"], r["revoked_at"])
        for r in rows
    ]


async def revoke_key(conn: Any, key_id: str) -> datetime:
    """Revoke an active key; returns when. Revoking twice is an error, so a typo is noticed."""
    revoked: datetime | None = await conn.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL"
        " RETURNING revoked_at",
        key_id,
    )
    if revoked is not None:
        return revoked
    row = await conn.fetchrow("SELECT revoked_at FROM api_keys WHERE key_id = $1", key_id)
    if row is None:
        raise UnknownKeyError(f"no key {key_id!r}; `postwire keys list --tenant T` shows the ids")
    raise UnknownKeyError(
        f"no active key {key_id!r}: it was revoked at {row['revoked_at']:%Y-%m-%d %H:%M:%S %Z}"
    )
