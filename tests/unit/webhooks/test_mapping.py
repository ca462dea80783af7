"""DeliveryEvent -> SendGrid Event Webhook JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from streams.contract.build import make_event
from streams.contract.records import DeliveryEvent, EventType
from streams.webhooks.mapping import EVENT_NAMES, sendgrid_event, wanted

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def _event(kind: EventType, **details: object) -> DeliveryEvent:
    base: dict[str, object] = {
        "request_id": "req-1",
        "message_id": "msg-1",
        "recipient": "ann@example.com",
    }
    base.update(details)
    return make_event(kind, "acme", NOW, **base)  # type: ignore[arg-type]


def test_delivered_has_sendgrids_fields_and_the_smtp_response() -> None:
    event = _event(
        "delivered",
        smtp={"code": 250, "enhanced_code": "2.0.0", "message": "queued as 42"},
        categories=["welcome", "onboarding"],
        custom_args={"user_id": "7"},
    )
    out = sendgrid_event(event)
    assert out == {
        "email": "ann@example.com",
        "timestamp": int(NOW.timestamp()),
        "event": "delivered",
        "sg_event_id": event["event_id"],
        "sg_message_id": "msg-1",
        "category": ["welcome", "onboarding"],
        "response": "250 queued as 42",
        "status": "2.0.0",
        "user_id": "7",
    }


def test_bounce_carries_reason_status_type_and_class() -> None:
    out = sendgrid_event(
        _event(
            "bounced",
            reason="550 5.1.1 no such user",
            smtp={"code": 550, "enhanced_code": "5.1.1", "message": "no such user"},
            bounce_class="invalid_recipient",
        )
    )
    assert out["event"] == "bounce"
    assert out["reason"] == "550 5.1.1 no such user"
    assert out["status"] == "5.1.1"
    assert out["type"] == "bounce"
    assert out["bounce_classification"] == "invalid_recipient"
    assert "response" not in out


def test_deferred_says_its_attempt_as_a_string() -> None:
    out = sendgrid_event(_event("deferred", reason="421 try later", attempt=3))
    assert out["event"] == "deferred"
    assert out["attempt"] == "3"
    assert out["response"] == "421 try later"


def test_open_and_click_carry_url_and_useragent() -> None:
    out = sendgrid_event(_event("clicked", url="https://x.example/a", user_agent="Mozilla/5.0"))
    assert out["event"] == "click"
    assert out["url"] == "https://x.example/a"
    assert out["useragent"] == "Mozilla/5.0"


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("processed", "processed"),
        ("dropped", "dropped"),
        ("throttled", "dropped"),
        ("failed", "dropped"),
        ("deferred", "deferred"),
        ("delivered", "delivered"),
        ("bounced", "bounce"),
        ("opened", "open"),
        ("clicked", "click"),
        ("complained", "spamreport"),
        ("unsubscribed", "unsubscribe"),
    ],
)
def test_every_event_type_has_a_sendgrid_name(kind: EventType, name: str) -> None:
    assert sendgrid_event(_event(kind))["event"] == name


def test_every_schema_event_type_is_mapped() -> None:
    from streams.contract.codec import default_codec

    symbols = default_codec().schemas.symbols("DeliveryEvent", "type")
    assert set(symbols) == set(EVENT_NAMES)


def test_custom_args_never_overwrite_the_events_own_fields() -> None:
    out = sendgrid_event(_event("processed", custom_args={"event": "fake", "email": "x", "k": "v"}))
    assert out["event"] == "processed"
    assert out["email"] == "ann@example.com"
    assert out["k"] == "v"


def test_a_repeated_event_maps_to_the_same_bytes() -> None:
    a = orjson.dumps(sendgrid_event(_event("delivered", attempt=1)))
    b = orjson.dumps(sendgrid_event(_event("delivered", attempt=1)))
    assert a == b


def test_reasons_of_events_sendgrid_does_not_have_say_what_they_were() -> None:
    out = sendgrid_event(_event("throttled", reason="over the hourly limit"))
    assert out["event"] == "dropped"
    assert out["reason"] == "throttled: over the hourly limit"


def test_wanted_follows_the_settings_booleans() -> None:
    assert wanted(_event("complained"), {"spam_report"})
    assert not wanted(_event("complained"), {"bounce", "delivered"})
    assert wanted(_event("bounced"), {"bounce"})
    assert not wanted(_event("processed"), set())
    assert wanted(_event("throttled"), {"dropped"})


def test_deferrals_of_postwires_own_limits_stay_off_the_webhook() -> None:
    ours = _event("deferred", reason="connection limit: no session to mx.example came free in 30s")
    assert not wanted(ours, {"deferred"})
    paced = _event("deferred", reason="throttled: mx.example rate, next message in 2.0s")
    assert not wanted(paced, {"deferred"})
    receivers = _event(
        "deferred",
        reason="throttled: try again later",
        smtp={"code": 421, "enhanced_code": "4.7.0", "message": "try again later"},
    )
    assert wanted(receivers, {"deferred"})
    assert wanted(_event("deferred", reason="greylisted"), {"deferred"})


def test_a_request_wide_event_names_its_request_as_the_message() -> None:
    event = make_event("processed", "acme", NOW, request_id="xmsg.0")
    out = sendgrid_event(event)
    assert out["sg_message_id"] == "xmsg.0"
    assert out["email"] == ""
