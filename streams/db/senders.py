"""Sender identities: the domains and single addresses a tenant may send from.

An identity is added unverified with a token of its own; it counts once verified, either by DNS
(the tenant published ``postwire-verification=<token>`` at ``_postwire-verification.<domain>``,
which proves control of the domain) or by the operator vouching for it, as a self-hosted MTA's
operator configures the domains it sends for. Several tenants may each prove one domain by DNS;
the operator vouching for a domain another tenant has verified is refused unless marked shared
(a sending domain the operator owns and lends out), so a typo cannot hand a customer's domain
to someone else.

``load_senders`` is the directory's view: per tenant, its verified domains and addresses and,
for the processes that sign, its opened DKIM keys (``streams/db/dkim_keys.py``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from streams.db.dkim_keys import SenderKey, load_signing_keys
from streams.errors import (
    SenderConflictError,
    SenderInvalidError,
    UnknownSenderError,
    UnknownTenantError,
)
from streams.mail.syntax import check_syntax
from streams.secret import ServerSecret

__all__ = [
    "MAX_IDENTITIES",
    "VERIFICATION_PREFIX",
    "Identity",
    "TenantSenders",
    "VerifiedBy",
    "add_identity",
    "find_identity",
    "get_identity",
    "list_identities",
    "load_senders",
    "mark_verified",
    "parse_identity",
    "remove_identity",
]

VerifiedBy = Literal["dns", "operator"]
VERIFICATION_PREFIX = "postwire-verification="
VERIFICATION_LABEL = "_postwire-verification"
MAX_IDENTITIES = 1000  # per tenant: each may carry a DKIM key


@dataclass(frozen=True)
class Identity:
    identity_id: int
    tenant_id: str
    domain: str
    address: str | None  # None: the whole domain
    token: str
    verified_at: datetime | None
    verified_by: str | None
    created_at: datetime

    @property
    def name(self) -> str:
        return self.address or self.domain

    @property
    def verified(self) -> bool:
        return self.verified_at is not None

    @property
    def verification_host(self) -> str:
        """Where the TXT record proving control goes (an address is proved by its domain)."""
        return f"{VERIFICATION_LABEL}.{self.domain}"

    @property
    def verification_value(self) -> str:
        return f"{VERIFICATION_PREFIX}{self.token}"


@dataclass(frozen=True)
class TenantSenders:
    """What one tenant may send as, in the directory snapshot."""

    domains: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()
    keys: Mapping[str, SenderKey] = field(default_factory=dict)  # domain -> signing key


def parse_identity(text: str) -> tuple[str, str | None]:
    """``"News@Acme.example"`` -> ``("acme.example", "news@acme.example")``, ``"acme.example"``
    -> ``("acme.example", None)``: the domain in its ASCII form, lower-cased, as delivery sees
    the From domain. SenderInvalidError for anything else."""
    value = text.strip().rstrip(".")
    if "@" in value:
        syntax = check_syntax(value)
        if not syntax.valid or syntax.ascii_domain is None:
            raise SenderInvalidError(f"{text!r} is not a valid address: {syntax.error}")
        return syntax.ascii_domain, f"{(syntax.local_part or '').lower()}@{syntax.ascii_domain}"
    syntax = check_syntax(f"postmaster@{value}")
    if not value or not syntax.valid or syntax.ascii_domain is None:
        raise SenderInvalidError(f"{text!r} is not a domain name one can send from")
    return syntax.ascii_domain, None


def _identity(r: Any) -> Identity:
    return Identity(
        r["identity_id"],
        r["tenant_id"],
        r["domain"],
        r["address"],
        r["token"],
        r["verified_at"],
        r["verified_by"],
        r["created_at"],
    )


async def add_identity(conn: Any, tenant: str, domain: str, address: str | None) -> Identity:
    """A new, unverified identity with its own verification token."""
    if not await conn.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant):
        raise UnknownTenantError(f"no tenant {tenant!r}; create it with `postwire tenant add`")
    count = await conn.fetchval(
        "SELECT count(*) FROM sender_identities WHERE tenant_id = $1", tenant
    )
    if count >= MAX_IDENTITIES:
        raise SenderConflictError(f"a tenant has at most {MAX_IDENTITIES} sender identities")
    try:
        row = await conn.fetchrow(
            "INSERT INTO sender_identities (tenant_id, domain, address, token)"
            " VALUES ($1, $2, $3, $4) RETURNING "
            "identity_id, tenant_id, domain, address, token, verified_at, verified_by, created_at",
            tenant,
            domain,
            address,
            secrets.token_urlsafe(24),
        )
    except asyncpg.UniqueViolationError as exc:
        raise SenderConflictError(
            f"{address or domain} is already a sender identity of {tenant}"
        ) from exc
    return _identity(row)


async def get_identity(conn: Any, tenant: str, identity_id: int) -> Identity:
    """The tenant's identity of that id; another tenant's is UnknownSenderError too."""
    row = await conn.fetchrow(
        "SELECT identity_id, tenant_id, domain, address, token, verified_at, verified_by,"
        " created_at"
        " FROM sender_identities WHERE identity_id = $1 AND tenant_id = $2",
        identity_id,
        tenant,
    )
    if row is None:
        raise UnknownSenderError(f"tenant {tenant} has no sender identity {identity_id}")
    return _identity(row)


async def find_identity(conn: Any, tenant: str, domain: str, address: str | None) -> Identity:
    row = await conn.fetchrow(
        "SELECT identity_id, tenant_id, domain, address, token, verified_at, verified_by,"
        " created_at"
        " FROM sender_identities WHERE tenant_id = $1 AND domain = $2"
        " AND coalesce(address, '') = coalesce($3::text, '')",
        tenant,
        domain,
        address,
    )
    if row is None:
        raise UnknownSenderError(
            f"{address or domain} is not a sender identity of {tenant};"
            " `postwire sender add` adds it"
        )
    return _identity(row)


async def list_identities(conn: Any, tenant: str, *, domains_only: bool = False) -> list[Identity]:
    rows = await conn.fetch(
        "SELECT identity_id, tenant_id, domain, address, token, verified_at, verified_by,"
        " created_at"
        " FROM sender_identities WHERE tenant_id = $1"
        " AND (NOT $2 OR address IS NULL) ORDER BY domain, address NULLS FIRST",
        tenant,
        domains_only,
    )
    return [_identity(r) for r in rows]


async def remove_identity(conn: Any, identity: Identity) -> None:
    """Remove an identity; a domain's DKIM keys go with it (nothing signs for it any more)."""
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM sender_identities WHERE identity_id = $1", identity.identity_id
        )
        if identity.address is None:
            await conn.execute(
                "DELETE FROM dkim_keys WHERE tenant_id = $1 AND domain = $2",
                identity.tenant_id,
                identity.domain,
            )


async def _claimed_by_other(conn: Any, identity: Identity) -> str | None:
    """Another tenant with a verified identity overlapping this one (same domain, or the same
    address, or one of them the whole domain)."""
    found: str | None = await conn.fetchval(
        "SELECT tenant_id FROM sender_identities WHERE domain = $1 AND tenant_id <> $2"
        " AND verified_at IS NOT NULL AND ($3::text IS NULL OR address IS NULL OR address = $3)"
        " ORDER BY tenant_id LIMIT 1",
        identity.domain,
        identity.tenant_id,
        identity.address,
    )
    return found


async def mark_verified(
    conn: Any, identity: Identity, by: VerifiedBy, *, shared: bool = False
) -> Identity:
    """Record a verification. DNS proof always counts (and upgrades an operator's word); the
    operator's word is refused for a domain another tenant has verified, unless ``shared``."""
    async with conn.transaction():
        # one domain's verifications one at a time, so two vouchings cannot both pass the check
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('postwire-sender:' || $1))", identity.domain
        )
        if by == "operator" and not shared:
            other = await _claimed_by_other(conn, identity)
            if other is not None:
                raise SenderConflictError(
                    f"{identity.domain} is a verified sender of tenant {other}:"
                    f" {identity.tenant_id} can prove it by DNS (`postwire sender verify`), or the"
                    " operator vouches with --shared for a domain it lends to several tenants"
                )
        row = await conn.fetchrow(
            "UPDATE sender_identities SET"
            " verified_at = CASE WHEN verified_by = 'dns' OR (verified_by IS NOT NULL AND $2 ="
            " 'operator') THEN verified_at ELSE now() END,"
            " verified_by = CASE WHEN verified_by = 'dns' THEN 'dns' ELSE $2 END"
            " WHERE identity_id = $1 RETURNING "
            "identity_id, tenant_id, domain, address, token, verified_at, verified_by, created_at",
            identity.identity_id,
            by,
        )
    if row is None:
        raise UnknownSenderError(f"sender identity {identity.identity_id} was removed meanwhile")
    return _identity(row)


async def load_senders(
    conn: Any, secret: ServerSecret | None = None, tenant: str | None = None
) -> dict[str, TenantSenders]:
    """Every tenant's verified identities (one tenant's when given); with ``secret``, also their
    DKIM keys, opened."""
    rows = await conn.fetch(
        "SELECT tenant_id, domain, address FROM sender_identities"
        " WHERE verified_at IS NOT NULL AND ($1::text IS NULL OR tenant_id = $1)",
        tenant,
    )
    domains: dict[str, set[str]] = {}
    addresses: dict[str, set[str]] = {}
    for r in rows:
        if r["address"] is None:
            domains.setdefault(r["tenant_id"], set()).add(r["domain"])
        else:
            addresses.setdefault(r["tenant_id"], set()).add(r["address"])
    keys = await load_signing_keys(conn, secret, tenant) if secret is not None else {}
    return {
        t: TenantSenders(
            frozenset(domains.get(t, ())), frozenset(addresses.get(t, ())), keys.get(t, {})
        )
        for t in domains.keys() | addresses.keys()
    }
