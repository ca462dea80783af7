"""DKIM keys of a (tenant, domain), sealed at rest.

A private key is stored only as ``ServerSecret.seal("dkim-key", pem, context=...)`` with the
tenant, the domain and the selector as the context: the row cannot be opened without the
install's secret, and a sealed key moved to another tenant's row does not open at all. Keys are
opened once per directory refresh, in the processes that sign (the delivery lanes), and live
only in their memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from streams.errors import SecretError, SelectorTakenError
from streams.secret import ServerSecret

__all__ = [
    "SEAL_PURPOSE",
    "DkimKeyInfo",
    "SenderKey",
    "list_dkim_keys",
    "load_signing_keys",
    "mark_published",
    "seal_context",
    "store_dkim_key",
]

log = logging.getLogger("postwire.dkim_keys")
SEAL_PURPOSE = "dkim-key"


def seal_context(tenant: str, domain: str, selector: str) -> str:
    """What a sealed key is bound to (unit separators: no part can smuggle in another)."""
    return f"{tenant}\x1f{domain}\x1f{selector}"


@dataclass(frozen=True)
class SenderKey:
    """An opened signing key, as the directory hands it to delivery (never printed)."""

    selector: str
    algorithm: str
    pem: bytes = field(repr=False)


@dataclass(frozen=True)
class DkimKeyInfo:
    """A key as operators and tenants see it: everything but the private half."""

    tenant_id: str
    domain: str
    selector: str
    algorithm: str
    public_txt: str
    active: bool
    published_at: datetime | None
    created_at: datetime

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def _info(r: Any) -> DkimKeyInfo:
    return DkimKeyInfo(
        r["tenant_id"],
        r["domain"],
        r["selector"],
        r["algorithm"],
        r["public_txt"],
        r["active"],
        r["published_at"],
        r["created_at"],
    )


async def store_dkim_key(
    conn: Any,
    secret: ServerSecret,
    tenant: str,
    domain: str,
    selector: str,
    algorithm: str,
    pem: bytes,
    public_txt: str,
) -> DkimKeyInfo:
    """Seal and store a key as the active one of (tenant, domain); the one before stays, inactive
    (its TXT record may still be published while receivers check older mail)."""
    sealed = secret.seal(SEAL_PURPOSE, pem, context=seal_context(tenant, domain, selector))
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE dkim_keys SET active = false WHERE tenant_id = $1 AND domain = $2"
                " AND active",
                tenant,
                domain,
            )
            row = await conn.fetchrow(
                "INSERT INTO dkim_keys (tenant_id, domain, selector, algorithm, sealed_key,"
                " public_txt) VALUES ($1, $2, $3, $4, $5, $6) RETURNING tenant_id, domain,"
                " selector, algorithm, public_txt, active, published_at, created_at",
                tenant,
                domain,
                selector,
                algorithm,
                sealed,
                public_txt,
            )
    except asyncpg.UniqueViolationError as exc:
        raise SelectorTakenError(
            f"the selector {selector!r} of {domain} is taken; pick another one"
        ) from exc
    return _info(row)


async def list_dkim_keys(conn: Any, tenant: str, domain: str | None = None) -> list[DkimKeyInfo]:
    """A tenant's keys (of one domain), the active one first, then newest first."""
    rows = await conn.fetch(
        "SELECT tenant_id, domain, selector, algorithm, public_txt, active, published_at,"
        " created_at"
        " FROM dkim_keys WHERE tenant_id = $1 AND ($2::text IS NULL"
        " OR domain = $2) ORDER BY domain, active DESC, created_at DESC, selector",
        tenant,
        domain,
    )
    return [_info(r) for r in rows]


async def mark_published(conn: Any, tenant: str, domain: str, selector: str) -> None:
    await conn.execute(
        "UPDATE dkim_keys SET published_at = now() WHERE tenant_id = $1 AND domain = $2"
        " AND selector = $3",
        tenant,
        domain,
        selector,
    )


_unopenable: set[tuple[str, str, str]] = set()  # logged once per process, not every refresh


async def load_signing_keys(
    conn: Any, secret: ServerSecret, tenant: str | None = None
) -> dict[str, dict[str, SenderKey]]:
    """tenant -> domain -> the active key, opened, for every domain its tenant has verified
    (of one tenant when given). A key that does not open (sealed under another server secret)
    is left out with one warning: its mail goes unsigned rather than signed by anything else."""
    rows = await conn.fetch(
        "SELECT k.tenant_id, k.domain, k.selector, k.algorithm, k.sealed_key FROM dkim_keys k"
        " JOIN sender_identities i ON i.tenant_id = k.tenant_id AND i.domain = k.domain"
        " AND i.address IS NULL AND i.verified_at IS NOT NULL"
        " WHERE k.active AND ($1::text IS NULL OR k.tenant_id = $1)",
        tenant,
    )
    keys: dict[str, dict[str, SenderKey]] = {}
    for r in rows:
        name = (r["tenant_id"], r["domain"], r["selector"])
        try:
            pem = secret.open(SEAL_PURPOSE, bytes(r["sealed_key"]), context=seal_context(*name))
        except SecretError as exc:
            if name not in _unopenable:
                _unopenable.add(name)
                log.error(  # noqa: TRY400 - the reason is one line, no traceback needed
                    "DKIM key %s of %s/%s left out: %s", name[2], name[0], name[1], exc
                )
            continue
        keys.setdefault(r["tenant_id"], {})[r["domain"]] = SenderKey(
            r["selector"], r["algorithm"], pem
        )
    return keys
