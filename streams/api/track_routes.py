"""``GET /t/o/<token>`` (the open pixel) and ``GET /t/c/<token>`` (the click redirect).

No API key: the sealed token (``streams/mail/track_token.py``) is the credential and names the
tenant, the message and the recipient. Each fetch becomes a ``track`` EmailRequest on the
requests topic, as the tracking webhook's events do, so it reaches the events topic, the tables
and the event webhooks; one made by a machine carries ``reason`` = ``machine: ...``.

A token this install did not issue is a 404 and records nothing. A good token is always
answered (the GIF, or the 302 to the URL the token carries, never another), even when Kafka does
not take the event (the recipient's mail client is not the place to report an outage) and when
the tenant's fetches go over its ingress rate (``POSTWIRE_API_RATE``, a bucket of their own):
those are not recorded, so one leaked token fetched in a loop cannot flood the pipeline.
The event carries the mail's categories, custom args and suppression group, as SendGrid's do,
read from the last event about the recipient (one indexed lookup).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from typing import Final

import asyncpg
from aiohttp import web
from aiokafka.errors import KafkaError

from streams.api.context import Api, Caller
from streams.api.machine import client_ip, machine_reason, networks
from streams.contract.build import email_request
from streams.contract.records import TrackEvent
from streams.db.events import Labels, labels_of
from streams.db.tenants import SCOPE_OF_OPERATION
from streams.errors import RecordTooLargeError, TrackingTokenError
from streams.mail.track_token import TrackKind, TrackRef, open_token

__all__ = ["PIXEL", "click_redirect", "open_pixel"]

log = logging.getLogger(__name__)

LABELS_WAIT: Final = 0.5  # s for the labels lookup; a pixel is never held up longer
PIXEL: Final = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_CACHE: Final = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}


def _key_id(api: Api, tenant: str) -> str | None:
    """A live key of the tenant allowed to record track requests: the gate authenticates every
    request by key id, and these come from no caller's key."""
    scope = SCOPE_OF_OPERATION["track"]
    keys = api.directory.current.key_ids.values()
    found = sorted(
        k.key_id for k in keys if k.tenant_id == tenant and not k.revoked and scope in k.scopes
    )
    return found[0] if found else None


async def _record(api: Api, request: web.Request, ref: TrackRef) -> None:
    if api.over_rate(ref.tenant, "tracking") > 0:
        # one leaked token fetched in a loop must not flood the pipeline: past the tenant's
        # ingress rate the fetch is answered and not recorded
        log.warning("tracking: tenant %s is over its rate; event not recorded", ref.tenant)
        return
    now = api.clock()
    trusted = networks(api.settings.api.trusted_proxies)
    ip = client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
    agent = request.headers.get("User-Agent")
    reason = machine_reason(
        ref.kind,
        method=request.method,
        user_agent=agent,
        ip=ip,
        issued_at=ref.issued_at,
        now=now.timestamp(),
    )
    track: TrackEvent = {
        "event_type": "opened" if ref.kind == "o" else "clicked",
        "message_id": ref.message_id,
        "recipient": ref.recipient,
        "url": ref.url,
        "user_agent": agent,
        "ip": ip,
        "occurred_at": now,
        "reason": reason,
    }
    key_id = _key_id(api, ref.tenant)
    if key_id is None:
        log.warning(
            "tracking: tenant %s has no live send key; the event is not recorded", ref.tenant
        )
        return
    request_id = uuid.uuid4().hex  # every fetch is an event of its own
    found = await _labels(api, ref)
    record = email_request(
        request_id,
        ref.tenant,
        "track",
        now,
        idempotency_key=f"track:{request_id}",
        track=track,
        categories=list(found.categories),
        custom_args=dict(found.custom_args),
        asm_group_id=found.asm_group_id,
    )
    try:
        await api.publish_requests(Caller(ref.tenant, key_id), [record])
    except (KafkaError, TimeoutError, RecordTooLargeError) as exc:
        log.warning("tracking: the %s event was not stored: %s", track["event_type"], exc)


async def _labels(api: Api, ref: TrackRef) -> Labels:
    """The mail's categories, custom args and group, which SendGrid puts on its opens and
    clicks; none when PostgreSQL does not answer at once (the fetch is still recorded)."""
    try:
        async with asyncio.timeout(LABELS_WAIT), api.db.acquire() as conn:
            return await labels_of(conn, ref.tenant, ref.message_id, ref.recipient)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("tracking: the %s event goes without its labels: %s", ref.kind, exc)
        return Labels()


def _ref(api: Api, request: web.Request, kind: TrackKind) -> TrackRef | None:
    try:
        return open_token(api.settings.secret, kind, request.match_info["token"])
    except TrackingTokenError:
        return None


def _refused() -> web.Response:
    return web.Response(status=404, text="unknown tracking link", headers=_NO_CACHE)


async def open_pixel(api: Api, request: web.Request) -> web.StreamResponse:
    ref = _ref(api, request, "o")
    if ref is None:
        return _refused()
    await _record(api, request, ref)
    return web.Response(body=PIXEL, content_type="image/gif", headers=_NO_CACHE)


async def click_redirect(api: Api, request: web.Request) -> web.StreamResponse:
    ref = _ref(api, request, "c")
    if ref is None or ref.url is None:
        return _refused()
    await _record(api, request, ref)
    return web.Response(status=302, headers={"Location": ref.url, **_NO_CACHE})
