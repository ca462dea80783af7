"""Tenants, API keys, suppressions (global and per suppression group) and sender identities: a
snapshot loaded from PostgreSQL, refreshed every few seconds, and pure authorization against it
(no database round trip per request).

A key is stored twice, neither time in plaintext: its sha256 (how the HTTP API finds the key a
caller presents) and a sealed copy (``key_sealed``, AES-GCM under the server secret), which a
process given the secret opens into memory at load, so the gate can check the signature of a
record a direct producer signed with the key."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from streams.db.config import TenantDefaults
from streams.db.dkim_keys import SenderKey
from streams.db.senders import TenantSenders, load_senders
from streams.errors import AuthError, SecretError
from streams.mail.syntax import check_syntax
from streams.secret import ServerSecret

__all__ = [
    "SEAL_PURPOSE",
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
# the ServerSecret purpose API keys are sealed under (the key id is the context)
SEAL_PURPOSE = "api-key"


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
    # whether a sealed copy is stored, and the key opened from it (None when there is none, or
    # it does not open under this server secret); only in memory, never in a repr or a log
    sealed: bool = False
    secret: bytes | None = field(default=None, repr=False)


@dataclass
class Directory:
    tenants: dict[str, Tenant] = field(default_factory=dict)
    keys: dict[bytes, ApiKey] = field(default_factory=dict)  # by sha256 of the key
    suppressed: set[tuple[str, str]] = field(default_factory=set)
    # (tenant, template id) -> (subject, html, text)
    templates: dict[tuple[str, str], tuple[str | None, str | None, str | None]] = field(
        default_factory=dict
    )
    # tenant -> its verified domains and addresses (and, where mail is signed, its DKIM keys)
    senders: dict[str, TenantSenders] = field(default_factory=dict)
    key_ids: dict[str, ApiKey] = field(default_factory=dict)  # the same keys by id
    # suppression groups (SendGrid's ASM): (tenant, group id, address) of who left a group,
    # and each tenant's group ids
    left_groups: set[tuple[str, int, str]] = field(default_factory=set)
    groups: dict[str, frozenset[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key_ids:
            self.key_ids = {key.key_id: key for key in self.keys.values()}

    def add_key(self, key: ApiKey) -> None:
        self.keys[key.key_sha256] = key
        self.key_ids[key.key_id] = key

    def by_secret(self, api_key: str) -> ApiKey | None:
        """The key a caller presents, found by its sha256: timing can at most reveal bits of a
        digest, never of the key."""
        return self.keys.get(api_key_digest(api_key))

    def authorize(self, key: ApiKey, tenant_id: str, operation: str) -> Tenant:
        """The tenant a request of ``key`` acts for; AuthError saying which check failed."""
        if key.tenant_id != tenant_id:
            raise AuthError(
                "auth.wrong_tenant", f"key {key.key_id} is another tenant's, not {tenant_id!r}'s"
            )
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

    def suppression(self, tenant_id: str, address: str, group_id: int | None) -> str | None:
        """Why mail of ``group_id`` (None: of no group) is not sent to ``address``: ``suppressed``
        (the tenant's global list), ``group_suppressed`` (the address left the group), or None."""
        address = address.lower()
        if (tenant_id, address) in self.suppressed:
            return "suppressed"
        if group_id is not None and (tenant_id, group_id, address) in self.left_groups:
            return "group_suppressed"
        return None

    def has_group(self, tenant_id: str, group_id: int) -> bool:
        return group_id in self.groups.get(tenant_id, ())

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


def _opened(sealed: bytes | None, key_id: str, secret: ServerSecret | None) -> bytes | None:
    if sealed is None or secret is None:
        return None
    try:
        return secret.open(SEAL_PURPOSE, sealed, context=key_id)
    except SecretError:
        # the gate says so for each record the key signs (auth.key_not_sealed)
        return None


def _key(r: Any, secret: ServerSecret | None) -> ApiKey:
    sealed = r["key_sealed"]
    return ApiKey(
        r["key_id"],
        r["tenant_id"],
        bytes(r["key_sha256"]),
        frozenset(r["scopes"]),
        r["revoked_at"] is not None,
        sealed is not None,
        _opened(None if sealed is None else bytes(sealed), r["key_id"], secret),
    )


async def load_directory(
    conn: Any,
    defaults: TenantDefaults,
    dkim_secret: ServerSecret | None = None,
    *,
    key_secret: ServerSecret | None = None,
) -> Directory:
    """The snapshot; DKIM keys are opened only with ``dkim_secret`` (the processes that sign),
    API keys from their sealed copies only with ``key_secret`` (the gate)."""
    tenants = {
        r["tenant_id"]: _tenant(r, defaults) for r in await conn.fetch("SELECT * FROM tenants")
    }
    keys = {
        bytes(r["key_sha256"]): _key(r, key_secret)
        for r in await conn.fetch("SELECT * FROM api_keys")
    }
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
    left_groups = {
        (r["tenant_id"], r["group_id"], r["address"].lower())
        for r in await conn.fetch(
            "SELECT tenant_id, group_id, address FROM group_suppressions WHERE removed_at IS NULL"
        )
    }
    groups: dict[str, set[int]] = {}
    for r in await conn.fetch("SELECT tenant_id, group_id FROM asm_groups"):
        groups.setdefault(r["tenant_id"], set()).add(r["group_id"])
    return Directory(
        tenants,
        keys,
        suppressed,
        templates,
        senders,
        left_groups=left_groups,
        groups={tenant: frozenset(ids) for tenant, ids in groups.items()},
    )


async def load_credentials(
    conn: Any,
    defaults: TenantDefaults,
    *,
    key_sha256: bytes | None = None,
    key_id: str | None = None,
    secret: ServerSecret | None = None,
) -> tuple[ApiKey, Tenant] | None:
    """One key (by its sha256 or its id) and its tenant, for a key the snapshot does not know
    yet (an indexed lookup)."""
    if key_sha256 is not None:
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE key_sha256 = $1", key_sha256)
    else:
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
    if row is None:
        return None
    tenant = await conn.fetchrow("SELECT * FROM tenants WHERE tenant_id = $1", row["tenant_id"])
    if tenant is None:
        return None
    return _key(row, secret), _tenant(tenant, defaults)


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
    *,
    secret: ServerSecret,
) -> tuple[str, str]:
    """Create a key; return (key_id, key). Stored are its sha256 and a copy sealed under the
    server secret (for the gate to check what the key signs), never the key itself."""
    key = f"pw_{secrets.token_urlsafe(32)}"
    key_id = f"k_{secrets.token_hex(6)}"
    await conn.execute(
        "INSERT INTO api_keys (key_id, tenant_id, key_sha256, scopes, key_sealed)"
        " VALUES ($1, $2, $3, $4, $5)",
        key_id,
        tenant_id,
        api_key_digest(key),
        list(scopes),
        secret.seal(SEAL_PURPOSE, key.encode(), context=key_id),
    )
    return key_id, key
