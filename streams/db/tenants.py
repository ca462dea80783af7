"""Tenants, hashed API keys, suppressions and sender identities: a snapshot loaded from
PostgreSQL, refreshed every few seconds, and pure authentication against it (no database round
trip per request)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from streams.db.config import TenantDefaults
from streams.db.dkim_keys import SenderKey
from streams.db.senders import TenantSenders, load_senders
from streams.errors import AuthError
from streams.mail.syntax import check_syntax
from streams.secret import ServerSecret

__all__ = [
    "ApiKey",
    "Directory",
    "Limits",
    "Tenant",
    "api_key_digest",
    "create_api_key",
    "create_tenant",
    "load_credentials",
    "load_directory",
]

SCOPE_OF_OPERATION = {"send": "send", "track": "send", "verify": "verify", "validate": "verify"}


def api_key_digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


@dataclass(frozen=True)
class Limits:
    per_second: int
    per_minute: int
    per_hour: int

    def of(self, window: str) -> int:
        return {"second": self.per_second, "minute": self.per_minute, "hour": self.per_hour}[window]


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    limits: Limits
    throttle_policy: str
    smtp_probe: bool
    disabled: bool = False


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant_id: str
    key_sha256: bytes
    scopes: frozenset[str]
    revoked: bool


@dataclass
class Directory:
    tenants: dict[str, Tenant] = field(default_factory=dict)
    keys: dict[bytes, ApiKey] = field(default_factory=dict)
    suppressed: set[tuple[str, str]] = field(default_factory=set)
    # (tenant, template id) -> (subject, html, text)
    templates: dict[tuple[str, str], tuple[str | None, str | None, str | None]] = field(
        default_factory=dict
    )
    # tenant -> its verified domains and addresses (and, where mail is signed, its DKIM keys)
    senders: dict[str, TenantSenders] = field(default_factory=dict)

    def authenticate(self, tenant_id: str, api_key: str | None, operation: str) -> Tenant:
        if not api_key:
            raise AuthError("auth.missing_key", "request has no api_key")
        # looked up by sha256: timing can at most reveal bits of a digest, never of the key
        key = self.keys.get(api_key_digest(api_key))
        if key is None or key.tenant_id != tenant_id:
            raise AuthError("auth.bad_key", f"api_key is not valid for tenant {tenant_id!r}")
        if key.revoked:
            raise AuthError("auth.revoked_key", f"api_key {key.key_id} was revoked")
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            raise AuthError("auth.unknown_tenant", f"tenant {tenant_id!r} does not exist")
        if tenant.disabled:
            raise AuthError("auth.tenant_disabled", f"tenant {tenant_id!r} is disabled")
        scope = SCOPE_OF_OPERATION.get(operation, operation)
        if scope not in key.scopes:
            raise AuthError("auth.scope", f"api_key {key.key_id} lacks the {scope!r} scope")
        return tenant

    def is_suppressed(self, tenant_id: str, address: str) -> bool:
        return (tenant_id, address.lower()) in self.suppressed

    def verified_sender(self, tenant_id: str, address: str) -> bool:
        """Whether ``address`` is a From the tenant may use: its domain or the address itself is
        a verified identity of the tenant. Two dict lookups for an ASCII address."""
        senders = self.senders.get(tenant_id)
        if senders is None:
            return False
        local, _, domain = address.rpartition("@")
        if not domain.isascii():
            syntax = check_syntax(address)
            if not syntax.valid or syntax.ascii_domain is None:
                return False
            local, domain = syntax.local_part or "", syntax.ascii_domain
        domain = domain.lower()
        return domain in senders.domains or f"{local.lower()}@{domain}" in senders.addresses

    def dkim_key(self, tenant_id: str, domain: str) -> SenderKey | None:
        """The tenant's own signing key of ``domain`` (verified), or None: never another's."""
        senders = self.senders.get(tenant_id)
        return None if senders is None else senders.keys.get(domain.lower())


def _tenant(r: Any, defaults: TenantDefaults) -> Tenant:
    return Tenant(
        r["tenant_id"],
        Limits(
            r["limit_per_second"] or defaults.rate_per_second,
            r["limit_per_minute"] or defaults.rate_per_minute,
            r["limit_per_hour"] or defaults.rate_per_hour,
        ),
        r["throttle_policy"],
        r["smtp_probe"] or defaults.smtp_probe,
        r["disabled_at"] is not None,
    )


def _key(r: Any) -> ApiKey:
    return ApiKey(
        r["key_id"],
        r["tenant_id"],
        bytes(r["key_sha256"]),
        frozenset(r["scopes"]),
        r["revoked_at"] is not None,
    )


async def load_directory(
    conn: Any, defaults: TenantDefaults, dkim_secret: ServerSecret | None = None
) -> Directory:
    """The snapshot; DKIM keys are opened only with ``dkim_secret`` (the processes that sign)."""
    tenants = {
        r["tenant_id"]: _tenant(r, defaults) for r in await conn.fetch("SELECT * FROM tenants")
    }
    keys = {bytes(r["key_sha256"]): _key(r) for r in await conn.fetch("SELECT * FROM api_keys")}
    suppressed = {
        (r["tenant_id"], r["address"].lower())
        for r in await conn.fetch(
            "SELECT tenant_id, address FROM suppressions WHERE removed_at IS NULL"
        )
    }
    templates = {
        (r["tenant_id"], r["template_id"]): (r["subject"], r["html"], r["text"])
        for r in await conn.fetch(
            "SELECT tenant_id, template_id, subject, html, text FROM templates"
        )
    }
    senders = await load_senders(conn, dkim_secret)
    return Directory(tenants, keys, suppressed, templates, senders)


async def load_credentials(
    conn: Any, defaults: TenantDefaults, key_sha256: bytes
) -> tuple[ApiKey, Tenant] | None:
    """One key and its tenant, for a key the snapshot does not know yet (an indexed lookup)."""
    row = await conn.fetchrow("SELECT * FROM api_keys WHERE key_sha256 = $1", key_sha256)
    if row is None:
        return None
    tenant = await conn.fetchrow("SELECT * FROM tenants WHERE tenant_id = $1", row["tenant_id"])
    if tenant is None:
        return None
    return _key(row), _tenant(tenant, defaults)


async def create_tenant(
    conn: asyncpg.Connection[Any],
    tenant_id: str,
    *,
    policy: str = "defer",
    per_second: int | None = None,
    per_minute: int | None = None,
    per_hour: int | None = None,
    smtp_probe: bool = False,
) -> None:
    await conn.execute(
        "INSERT INTO tenants (tenant_id, name, limit_per_second, limit_per_minute, limit_per_hour,"
        " throttle_policy, smtp_probe) VALUES ($1, $1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (tenant_id) DO UPDATE SET limit_per_second = EXCLUDED.limit_per_second,"
        " limit_per_minute = EXCLUDED.limit_per_minute, limit_per_hour = EXCLUDED.limit_per_hour,"
        " throttle_policy = EXCLUDED.throttle_policy, smtp_probe = EXCLUDED.smtp_probe",
        tenant_id,
        per_second,
        per_minute,
        per_hour,
        policy,
        smtp_probe,
    )


async def create_api_key(
    conn: asyncpg.Connection[Any],
    tenant_id: str,
    scopes: tuple[str, ...] = ("send", "verify", "read"),
) -> tuple[str, str]:
    """Create a key; return (key_id, key). Only the key's sha256 is stored."""
    key = f"pw_{secrets.token_urlsafe(32)}"
    key_id = f"k_{secrets.token_hex(6)}"
    await conn.execute(
        "INSERT INTO api_keys (key_id, tenant_id, key_sha256, scopes) VALUES ($1, $2, $3, $4)",
        key_id,
        tenant_id,
        api_key_digest(key),
        list(scopes),
    )
    return key_id, key
