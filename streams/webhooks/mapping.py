"""A DeliveryEvent as one object of SendGrid's Event Webhook JSON (pure).

Field names and event names are SendGrid's, so a receiver written for SendGrid reads postwire's
posts unchanged: ``bounced`` is ``bounce``, ``complained`` is ``spamreport`` and so on. Events
SendGrid has no name for go out as the nearest one it has (a request refused by the rate limit,
or a message that could not be built, was never sent: ``dropped``, with the reason).
Custom args sit at the top level, as SendGrid puts them, except where one would overwrite a
field of the event itself."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from streams.contract.records import DeliveryEvent, EventType

__all__ = [
    "EVENT_NAMES",
    "EVENT_SETTINGS",
    "SETTING_NAMES",
    "SendGridEvent",
    "event_name",
    "sendgrid_event",
    "wanted",
]

SendGridEvent = Literal[
    "processed",
    "dropped",
    "deferred",
    "delivered",
    "bounce",
    "open",
    "click",
    "unsubscribe",
    "group_unsubscribe",
    "spamreport",
]

EVENT_NAMES: dict[EventType, SendGridEvent] = {
    "processed": "processed",
    "dropped": "dropped",
    "throttled": "dropped",
    "failed": "dropped",
    "deferred": "deferred",
    "delivered": "delivered",
    "bounced": "bounce",
    "opened": "open",
    "clicked": "click",
    "complained": "spamreport",
    "unsubscribed": "unsubscribe",
}

# the event-type booleans of SendGrid's webhook settings, and the events each one lets through
EVENT_SETTINGS: dict[str, SendGridEvent] = {
    "processed": "processed",
    "dropped": "dropped",
    "deferred": "deferred",
    "delivered": "delivered",
    "bounce": "bounce",
    "open": "open",
    "click": "click",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "group_unsubscribe",
    "spam_report": "spamreport",
}
# SendGrid's settings also carry group_resubscribe: postwire has no resubscribe page (a group's
# member is taken off only through the API, which SendGrid reports as no event either), so it
# is stored and shown, and selects nothing
SETTING_NAMES: tuple[str, ...] = (*EVENT_SETTINGS, "group_resubscribe")

# bounce classes the delivery stage gives that SendGrid reports as ``blocked``, not ``bounce``
_BLOCKED = frozenset({"block", "blocked", "policy", "spam", "reputation"})


# a deferral postwire makes for a limit of its own (a site's rate or connections, a tenant's
# rate, a suspended site, an open breaker) carries no receiver's reply: SendGrid reports only
# what the receiver deferred, so these stay in the events table and off the webhook
_OWN_LIMITS = ("throttled:", "connection limit:", "suspended:", "circuit_open:")


def own_deferral(event: DeliveryEvent) -> bool:
    """Whether ``event`` is a deferral of postwire's own limits, not a receiver's answer."""
    reason = event["reason"] or ""
    return event["type"] == "deferred" and event["smtp"] is None and reason.startswith(_OWN_LIMITS)


def event_name(event: DeliveryEvent) -> SendGridEvent:
    """SendGrid's name of ``event``: an unsubscribe from one suppression group is its
    ``group_unsubscribe``."""
    name = EVENT_NAMES[event["type"]]
    if name == "unsubscribe" and _optional(event, "asm_group_id") is not None:
        return "group_unsubscribe"
    return name


def wanted(event: DeliveryEvent, enabled: Iterable[str]) -> bool:
    """Does an endpoint with the setting names ``enabled`` switched on take this event?"""
    if own_deferral(event):
        return False
    name = event_name(event)
    return any(EVENT_SETTINGS.get(setting) == name for setting in enabled)


def sendgrid_event(event: DeliveryEvent) -> dict[str, Any]:
    """The event as SendGrid's webhook posts it. ``sg_event_id`` is the event's own stable id,
    so a batch posted again carries the same ids and a receiver can deduplicate."""
    name = event_name(event)
    out: dict[str, Any] = {
        "email": event["recipient"] or "",
        "timestamp": int(event["occurred_at"].timestamp()),
        "event": name,
        "sg_event_id": event["event_id"],
    }
    # the X-Message-Id (a personalization's request id) when the event is about the request
    # as a whole (processed, dropped before expansion)
    message_id = event["message_id"] or event["request_id"]
    if message_id:
        out["sg_message_id"] = message_id
    if event["categories"]:
        out["category"] = list(event["categories"])
    out.update(_outcome(event, name))
    if name == "deferred" or event["attempt"]:
        out["attempt"] = str(event["attempt"])  # SendGrid sends it as a string
    if event["url"]:
        out["url"] = event["url"]
    if event["user_agent"]:
        out["useragent"] = event["user_agent"]
    ip = _optional(event, "ip")
    if ip:
        out["ip"] = ip
    group = _optional(event, "asm_group_id")
    if group is not None:
        out["asm_group_id"] = group
    if name == "open":
        # SendGrid's flag for opens by mail privacy proxies; ours also covers scanners
        out["sg_machine_open"] = (event["reason"] or "").startswith("machine:")
    for key, value in event["custom_args"].items():
        out.setdefault(key, value)
    return out


def _outcome(event: DeliveryEvent, name: SendGridEvent) -> dict[str, Any]:
    """What the receiving server said: ``response`` for delivered and deferred, ``reason`` for
    the others; ``status`` (the enhanced code) and, for a bounce, its ``type``."""
    out: dict[str, Any] = {}
    smtp = event["smtp"]
    reason = event["reason"]
    if event["type"] in ("throttled", "failed") and reason:
        reason = f"{event['type']}: {reason}"
    if name in ("delivered", "deferred"):
        if smtp is not None:
            out["response"] = f"{smtp['code']} {smtp['message']}".strip()
        elif reason:
            out["response"] = reason
    elif reason:
        out["reason"] = reason
    if smtp is not None and smtp["enhanced_code"]:
        out["status"] = smtp["enhanced_code"]
    elif smtp is not None and name == "bounce":
        out["status"] = f"{smtp['code'] // 100}.0.0"
    if name == "bounce":
        klass = event["bounce_class"]
        out["type"] = "blocked" if klass in _BLOCKED else "bounce"
        if klass:
            out["bounce_classification"] = klass
    return out


def _optional(event: Mapping[str, Any], name: str) -> Any:
    """A field a newer DeliveryEvent may carry (the tracking stage's client IP, the group)."""
    return event.get(name)
