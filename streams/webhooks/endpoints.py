"""A tenant's endpoint as SendGrid's settings API shows and changes it, signing switched on
with a key of its own, and the test post: what the API and the CLI both do."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import orjson

from streams.contract.records import WebhookBatch
from streams.db.webhooks import EndpointRow, Failure, endpoint_key, store_key, update_endpoint
from streams.secret import ServerSecret
from streams.webhooks.mapping import SETTING_NAMES
from streams.webhooks.post import Poster, PostResult
from streams.webhooks.signing import EndpointKey, generate_key

__all__ = ["post_sample", "replayed", "sample_payload", "set_signing", "settings_view"]


def settings_view(row: EndpointRow) -> dict[str, Any]:
    """The body of SendGrid's ``GET /v3/user/webhooks/event/settings``."""
    view: dict[str, Any] = {"enabled": row.enabled, "url": row.url}
    view.update({name: name in row.events for name in SETTING_NAMES})
    view.update({"oauth_client_id": "", "oauth_token_url": ""})
    return view


async def set_signing(conn: Any, secret: ServerSecret, tenant: str, enabled: bool) -> EndpointRow:
    """Sign the tenant's posts (with its key, made now if it has none) or stop signing them.
    The key is kept when signing stops, so switching it back on shows the same public key."""
    if not enabled:
        return await update_endpoint(conn, tenant, signed=False)
    current = await endpoint_key(conn, secret, tenant)
    pem = current if current is not None else generate_key()
    return await store_key(conn, secret, tenant, pem, EndpointKey(pem).public_key)


def sample_payload(now: datetime | None = None) -> bytes:
    """SendGrid's test post: one ``processed`` event for example@test.com."""
    at = now or datetime.now(UTC)
    event = {
        "email": "example@test.com",
        "timestamp": int(at.timestamp()),
        "event": "processed",
        "sg_event_id": f"test-{secrets.token_hex(8)}",
        "sg_message_id": f"test-{secrets.token_hex(8)}",
        "category": ["test"],
    }
    return orjson.dumps([event])


async def post_sample(
    conn: Any,
    secret: ServerSecret,
    row: EndpointRow,
    url: str,
    timeout: float,
    allow_private: bool,
) -> PostResult:
    """Post the test event to ``url``, signed when the tenant's posts are."""
    pem = await endpoint_key(conn, secret, row.tenant_id) if row.signed else None
    key = EndpointKey(pem) if pem is not None else None
    poster = Poster(timeout, allow_private=allow_private)
    try:
        now = datetime.now(UTC)
        return await poster.post(url, sample_payload(now), key, int(now.timestamp()))
    finally:
        await poster.close()


def replayed(failure: Failure, now: datetime) -> WebhookBatch:
    """A dead-lettered batch made new: the same id and payload (so the same ``sg_event_id``s),
    no failed attempts, and a fresh retry window from ``now``."""
    return {
        "batch_id": failure.batch_id,
        "tenant": failure.tenant_id,
        "payload": failure.payload,
        "events": failure.events,
        "attempt": 0,
        "first_at": now,
        "not_before": None,
        "last_error": None,
    }
