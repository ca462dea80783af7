"""``POST /v1/events/webhook`` bodies to ``track`` EmailRequests.

Takes an array of engagement events in SendGrid's event-webhook vocabulary (``open``, ``click``,
``spamreport``, ``unsubscribe``) or ours (``opened``, ``clicked``, ``complained``,
``unsubscribed``). Each event gets an id derived from its content, used as the request's
idempotency key, so a provider that posts the same batch twice records each event once.

A malformed event fails the whole body (400, nothing recorded). A well-formed event that is not
the caller's to record is refused on its own, with its index as the error's field: one dated more
than a few minutes ahead (``<i>.timestamp``), or one about a message id not issued to the caller
(``<i>.message_id``). Ids the owner tag does not vouch for (mail sent before ids were tagged, or
by a direct producer under its own ids) are ``unverified`` until the caller's messages table
says they are its own. Pure: time and ids are parameters.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Final

from streams.api.check import Check
from streams.contract.build import email_request
from streams.contract.ids import MessageIds, base_id
from streams.contract.records import EmailRequest, TrackEvent, TrackType
from streams.gate.trust import future_refusal

__all__ = ["MAX_EVENTS", "TRACK_TYPES", "Webhook", "translate_webhook"]

MAX_EVENTS: Final = 1000
TRACK_TYPES: Final[dict[str, TrackType]] = {
    "open": "opened",
    "opened": "opened",
    "click": "clicked",
    "clicked": "clicked",
    "spamreport": "complained",
    "complaint": "complained",
    "complained": "complained",
    "unsubscribe": "unsubscribed",
    "unsubscribed": "unsubscribed",
}
_EVENT_IDS: Final = uuid.UUID("a3d6e1b2-7c4f-4f0e-9b1a-5e2d8c7f6a30")


def _when(check: Check, value: Any, field: str, now: datetime) -> datetime:
    """UNIX seconds (SendGrid's ``timestamp``) or ISO 8601; absent means now."""
    if value is None:
        return now
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e11:
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    check.fail(field, "must be UNIX seconds or an ISO 8601 time")
    return now


@dataclasses.dataclass
class Webhook:
    """A webhook body's events: the accepted ones, those whose message id awaits the tenant's
    messages table (each with its index in the body), and the refusals as (field, message)."""

    accepted: list[EmailRequest] = dataclasses.field(default_factory=list)
    unverified: list[tuple[int, EmailRequest]] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def message_ids(self) -> list[str]:
        """What to look for among the tenant's messages: each unverified id and its base."""
        found = {r["track"]["message_id"] for _, r in self.unverified if r["track"]}
        return sorted(found | {base_id(m) for m in found})

    def resolve(self, own: Collection[str]) -> None:
        """Accept the unverified events whose id (or its base) is among ``own``, refuse the
        rest."""
        for i, r in self.unverified:
            track = r["track"]
            if track is None:
                continue
            message_id = track["message_id"]
            if message_id in own or base_id(message_id) in own:
                self.accepted.append(r)
            else:
                self.refused.append(
                    (f"{i}.message_id", f"message id {message_id!r} is not one of your messages")
                )
        self.unverified = []


def translate_webhook(body: Any, *, tenant: str, ids: MessageIds, now: datetime) -> Webhook:
    """The track EmailRequest records for a webhook body, sorted by whether they are the
    tenant's to record; IngressValidationError lists every problem of a malformed body."""
    check = Check()
    if isinstance(body, dict):
        body = [body]
    items = check.items(body, "body")
    if not items and not check.errors:
        check.fail("body", "expected a non-empty array of events")
    if len(items) > MAX_EVENTS:
        check.fail("body", f"At most {MAX_EVENTS} events per call.")
        items = []
    hook = Webhook()
    for i, raw in enumerate(items):
        field = str(i)
        event = check.obj(raw, field) or {}
        kind = TRACK_TYPES.get(str(event.get("event", "")).lower())
        if kind is None:
            check.fail(f"{field}.event", f"must be one of {', '.join(sorted(TRACK_TYPES))}")
        message_id = event.get("message_id", event.get("sg_message_id"))
        if not isinstance(message_id, str) or not message_id:
            check.fail(f"{field}.message_id", "The message_id (or sg_message_id) is required.")
        email = event.get("email")
        if not isinstance(email, str) or "@" not in email:
            check.fail(f"{field}.email", "Does not contain a valid address.")
        url = check.text(event.get("url"), f"{field}.url")
        agent = check.text(event.get("user_agent", event.get("useragent")), f"{field}.user_agent")
        ip = check.text(event.get("ip"), f"{field}.ip")
        at = _when(check, event.get("timestamp"), f"{field}.timestamp", now)
        if kind is None or not isinstance(message_id, str) or not isinstance(email, str):
            continue
        event_id = uuid.uuid5(
            _EVENT_IDS, "\x1f".join((tenant, kind, message_id, email.lower(), at.isoformat()))
        ).hex
        track: TrackEvent = {
            "event_type": kind,
            "message_id": message_id,
            "recipient": email,
            "url": url,
            "user_agent": agent,
            "ip": ip,
            "occurred_at": at,
            "reason": None,
        }
        record = email_request(
            event_id, tenant, "track", now, idempotency_key=f"track:{event_id}", track=track
        )
        future = future_refusal(at, now)
        if future is not None:
            hook.refused.append((f"{field}.{future.field}", str(future)))
        elif ids.issued_to(tenant, message_id):
            hook.accepted.append(record)
        else:
            hook.unverified.append((i, record))
    check.done()
    return hook
