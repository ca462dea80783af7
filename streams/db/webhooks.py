"""Each tenant's event webhook endpoint and the batches it never accepted, in PostgreSQL.

The endpoint's ECDSA private key is stored only as ``ServerSecret.seal("webhook-key", pem,
context=tenant)``: it opens with the install's secret in the row of its own tenant and nowhere
else, and only the public key is ever read back out of here for showing. Every function takes
the tenant it acts for; none reads or writes another tenant's row."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from streams.errors import SecretError
from streams.secret import ServerSecret

__all__ = [
    "SEAL_PURPOSE",
    "EndpointRow",
    "Failure",
    "endpoint_key",
    "failures",
    "get_endpoint",
    "load_endpoints",
    "mark_replayed",
    "record_failure",
    "store_key",
    "update_endpoint",
]

SEAL_PURPOSE = "webhook-key"


@dataclass(frozen=True)
class EndpointRow:
    """An endpoint as the API shows it and the webhook stage posts to it; ``pem`` is the opened
    private key, present only when loaded with the secret for signing."""

    tenant_id: str
    enabled: bool = False
    url: str = ""
    events: frozenset[str] = frozenset()
    signed: bool = False
    public_key: str | None = None
    updated_at: datetime | None = None
    pem: bytes | None = field(default=None, repr=False)


def _row(r: Any, pem: bytes | None = None) -> EndpointRow:
    return EndpointRow(
        r["tenant_id"],
        r["enabled"],
        r["url"],
        frozenset(r["events"]),
        r["signed"],
        r["public_key"],
        r["updated_at"],
        pem,
    )


async def get_endpoint(conn: Any, tenant: str) -> EndpointRow:
    """The tenant's endpoint; a tenant that never set one has a disabled, empty one."""
    row = await conn.fetchrow(
        "SELECT tenant_id, enabled, url, events, signed, public_key, updated_at"
        " FROM webhook_endpoints WHERE tenant_id = $1",
        tenant,
    )
    return EndpointRow(tenant) if row is None else _row(row)


async def update_endpoint(
    conn: Any,
    tenant: str,
    *,
    enabled: bool | None = None,
    url: str | None = None,
    events: Iterable[str] | None = None,
    signed: bool | None = None,
) -> EndpointRow:
    """Change what is given and keep the rest (SendGrid's PATCH). Signing can only be switched
    on once the endpoint has a key (``store_key``)."""
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints AS e (tenant_id, enabled, url, events, signed)"
        " VALUES ($1, coalesce($2, false), coalesce($3, ''), coalesce($4, '{}'::text[]),"
        " coalesce($5, false))"
        " ON CONFLICT (tenant_id) DO UPDATE SET"
        " enabled = coalesce($2, e.enabled), url = coalesce($3, e.url),"
        " events = coalesce($4, e.events), signed = coalesce($5, e.signed), updated_at = now()"
        " RETURNING tenant_id, enabled, url, events, signed, public_key, updated_at",
        tenant,
        enabled,
        url,
        None if events is None else sorted(set(events)),
        signed,
    )
    return _row(row)


async def store_key(
    conn: Any, secret: ServerSecret, tenant: str, pem: bytes, public_key: str
) -> EndpointRow:
    """Seal ``pem`` as the tenant's signing key (replacing one it had) and switch signing on."""
    sealed = secret.seal(SEAL_PURPOSE, pem, context=tenant)
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints AS e (tenant_id, signed, sealed_key, public_key)"
        " VALUES ($1, true, $2, $3) ON CONFLICT (tenant_id) DO UPDATE SET signed = true,"
        " sealed_key = $2, public_key = $3, updated_at = now()"
        " RETURNING tenant_id, enabled, url, events, signed, public_key, updated_at",
        tenant,
        sealed,
        public_key,
    )
    return _row(row)


async def load_endpoints(conn: Any, secret: ServerSecret) -> dict[str, EndpointRow]:
    """Every enabled endpoint with a URL, with the private key of the signed ones opened (what
    the webhook stage posts with). A key that does not open is left out with its endpoint:
    posting unsigned what the tenant asked to have signed would be worse than not posting."""
    rows = await conn.fetch(
        "SELECT tenant_id, enabled, url, events, signed, public_key, updated_at, sealed_key"
        " FROM webhook_endpoints WHERE enabled AND url <> ''"
    )
    found: dict[str, EndpointRow] = {}
    for r in rows:
        pem = None
        if r["signed"]:
            try:
                pem = secret.open(SEAL_PURPOSE, r["sealed_key"], context=r["tenant_id"])
            except SecretError:
                continue
        found[r["tenant_id"]] = _row(r, pem)
    return found


async def endpoint_key(conn: Any, secret: ServerSecret, tenant: str) -> bytes | None:
    """The tenant's opened signing key, if it has one (the API's test post signs with it)."""
    sealed = await conn.fetchval(
        "SELECT sealed_key FROM webhook_endpoints WHERE tenant_id = $1", tenant
    )
    return None if sealed is None else secret.open(SEAL_PURPOSE, sealed, context=tenant)


@dataclass(frozen=True)
class Failure:
    tenant_id: str
    batch_id: str
    events: int
    attempts: int
    reason: str
    first_at: datetime
    failed_at: datetime
    replayed_at: datetime | None
    payload: bytes = field(repr=False, default=b"")


async def record_failure(conn: Any, failure: Failure) -> None:
    """Keep a batch given up on; the same batch given up on again (a repeated Kafka batch, or a
    replay that failed too) updates its row and makes it pending again."""
    await conn.execute(
        "INSERT INTO webhook_failures (tenant_id, batch_id, events, payload, attempts, reason,"
        " first_at, failed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (tenant_id, batch_id) DO UPDATE SET attempts = EXCLUDED.attempts,"
        " reason = EXCLUDED.reason, failed_at = EXCLUDED.failed_at, replayed_at = NULL",
        failure.tenant_id,
        failure.batch_id,
        failure.events,
        failure.payload,
        failure.attempts,
        failure.reason,
        failure.first_at,
        failure.failed_at,
    )


async def failures(
    conn: Any, tenant: str, *, pending_only: bool = True, limit: int = 100
) -> list[Failure]:
    """The tenant's dead-lettered batches, newest first (with their payloads)."""
    rows = await conn.fetch(
        "SELECT tenant_id, batch_id, events, attempts, reason, first_at, failed_at,"
        " replayed_at, payload FROM webhook_failures WHERE tenant_id = $1"
        " AND (NOT $2 OR replayed_at IS NULL) ORDER BY failed_at DESC LIMIT $3",
        tenant,
        pending_only,
        limit,
    )
    return [Failure(**dict(r)) for r in rows]


async def mark_replayed(conn: Any, tenant: str, batch_ids: Sequence[str], at: datetime) -> int:
    """Mark the tenant's batches as handed back to the webhook stage; how many were."""
    result = await conn.execute(
        "UPDATE webhook_failures SET replayed_at = $3 WHERE tenant_id = $1"
        " AND batch_id = ANY($2::text[])",
        tenant,
        list(batch_ids),
        at,
    )
    return int(result.split()[-1])
