"""SendGrid v3 mail/send bodies to EmailRequest records: mapping, limits, error shape."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from streams.api.sendgrid import MAX_RECIPIENTS, translate
from streams.contract.codec import default_codec
from streams.errors import IngressValidationError

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def body(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "bob@example.com", "name": "Bob"}]}],
        "from": {"email": "news@acme.example", "name": "Acme"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }
    base.update(kw)
    return base


def run(b: Any, **kw: Any) -> list[dict[str, Any]]:
    args: dict[str, Any] = {
        "tenant": "acme",
        "message_id": "m1",
        "idempotency_key": None,
        "priority": "normal",
        "now": NOW,
    }
    args.update(kw)
    return translate(b, **args)


def problems(b: Any, **kw: Any) -> dict[str | None, str]:
    with pytest.raises(IngressValidationError) as caught:
        run(b, **kw)
    return dict(caught.value.problems)


def test_a_plain_send_maps_to_one_encodable_request() -> None:
    [r] = run(body(categories=["welcome"], custom_args={"campaign": "c1"}, batch_id="b7"))
    assert r["request_id"] == "m1"
    assert r["recipients"][0]["email"] == "bob@example.com"
    assert r["content"]["subject"] == "Hello"
    assert r["content"]["text"] == "Hi"
    assert r["custom_args"] == {"campaign": "c1", "batch_id": "b7"}
    assert r["categories"] == ["welcome"]
    default_codec().encode("EmailRequest", r)  # the contract accepts it


def test_personalizations_split_with_their_own_subject_data_and_kinds() -> None:
    b = body(
        personalizations=[
            {"to": [{"email": "a@x.example"}], "cc": [{"email": "c@x.example"}]},
            {
                "to": [{"email": "b@y.example"}],
                "bcc": [{"email": "d@y.example"}],
                "subject": "Own",
                "dynamic_template_data": {"name": "B", "n": 3, "deep": {"k": [1]}},
                "send_at": 1_800_000_000,
            },
        ],
        attachments=[{"filename": "a.txt", "content": base64.b64encode(b"hey").decode()}],
    )
    first, second = run(b, idempotency_key="k")
    assert (first["request_id"], second["request_id"]) == ("m1.0", "m1.1")
    assert (first["idempotency_key"], second["idempotency_key"]) == ("k.0", "k.1")
    assert [r["kind"] for r in first["recipients"]] == ["to", "cc"]
    assert [r["kind"] for r in second["recipients"]] == ["to", "bcc"]
    assert second["content"]["subject"] == "Own"
    assert first["content"]["subject"] == "Hello"
    assert second["recipients"][0]["substitutions"] == {"name": "B", "n": "3", "deep": '{"k":[1]}'}
    assert second["send_at"] == datetime.fromtimestamp(1_800_000_000, UTC)
    assert first["content"]["attachments"][0]["content"] == b"hey"


def test_every_problem_is_reported_with_its_field() -> None:
    found = problems(
        {
            "personalizations": [{"cc": [{"email": "nobody"}]}],
            "content": [{"type": "text/calendar", "value": "x"}],
            "headers": {"Subject": "sneaky"},
            "attachments": [{"filename": "a", "content": "***"}],
        }
    )
    assert "from" in found
    assert "personalizations.0.to" in found
    assert "personalizations.0.cc.0.email" in found
    assert "content.0.type" in found
    assert "headers.Subject" in found
    assert "attachments.0.content" in found


def test_limits_are_sendgrids() -> None:
    many = [{"email": f"u{i}@x.example"} for i in range(MAX_RECIPIENTS + 1)]
    assert "personalizations" in problems(body(personalizations=[{"to": many}]))
    assert "categories" in problems(body(categories=[str(i) for i in range(11)]))
    assert "personalizations" in problems(body(personalizations=[]))


def test_a_template_needs_no_content_or_subject() -> None:
    [r] = run(body(template_id="welcome", content=None, subject=None))
    assert r["content"]["template_id"] == "welcome"


def test_bad_priority_and_non_object_bodies() -> None:
    assert "X-Postwire-Priority" in problems(body(), priority="urgent")
    assert "body" in problems(["not", "an", "object"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"from": {"email": "news@"}}, "from.email"),
        ({"from": {"email": "jörg@acme.example"}}, "from.email"),  # needs SMTPUTF8
        ({"reply_to": {"email": "two@@acme.example"}}, "reply_to.email"),
        (
            {"personalizations": [{"to": [{"email": "bob@example..com"}]}]},
            "personalizations.0.to.0.email",
        ),
        (
            {"personalizations": [{"to": [{"email": "b@example.com"}], "bcc": [{"email": "x"}]}]},
            "personalizations.0.bcc.0.email",
        ),
    ],
)
def test_addresses_that_cannot_be_sent_are_400s(change: dict[str, Any], field: str) -> None:
    found = problems(body(**change))
    assert field in found
    assert found[field].startswith("Does not contain a valid address")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject": "Hi\r\nBcc: x@evil.example"}, "subject"),
        ({"subject": "Hi\x1b[31m"}, "subject"),
        ({"from": {"email": "a@acme.example", "name": "Acme\nBcc: x@evil.example"}}, "from.name"),
        (
            {"personalizations": [{"to": [{"email": "b@example.com", "name": "B\x00"}]}]},
            "personalizations.0.to.0.name",
        ),
        (
            {"personalizations": [{"to": [{"email": "b@example.com"}], "subject": "a\rb"}]},
            "personalizations.0.subject",
        ),
        ({"headers": {"X-A": "ok\r\nBcc: x@evil.example"}}, "headers.X-A"),
        ({"headers": {"X-A\r\nBcc": "x"}}, "headers.X-A\r\nBcc"),
        ({"headers": {"X A": "x"}}, "headers.X A"),
        ({"categories": ["a\nb"]}, "categories.0"),
        ({"categories": ["x" * 256]}, "categories.0"),
        ({"content": [{"type": "text/plain", "value": "bare\rcr"}]}, "content.0.value"),
        ({"content": [{"type": "text/html", "value": "<p>\x00</p>"}]}, "content.0.value"),
        ({"attachments": [{"filename": "a\r\n.txt", "content": "aGk="}]}, "attachments.0.filename"),
        (
            {"attachments": [{"filename": "a", "content": "aGk=", "type": "pdf"}]},
            "attachments.0.type",
        ),
        (
            {"attachments": [{"filename": "a", "content": "aGk=", "disposition": "x"}]},
            "attachments.0.disposition",
        ),
    ],
)
def test_what_would_fail_later_is_a_400_at_the_door(change: dict[str, Any], field: str) -> None:
    assert field in problems(body(**change))


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "sender",
        "Return-Path",
        "DKIM-Signature",
        "Received",
        "Message-ID",
        "Content-Type",
        "X-Postwire-Args",
        "ARC-Seal",
    ],
)
def test_custom_headers_cannot_set_reserved_ones(name: str) -> None:
    found = problems(body(headers={name: "x"}))
    assert "reserved" in found[f"headers.{name}"]


def test_one_click_unsubscribe_headers_are_allowed_and_checked() -> None:
    pair = {
        "List-Unsubscribe": "<https://acme.example/u/1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    [r] = run(body(headers=pair))
    assert r["content"]["headers"] == pair
    # the pair is checked over the message's and the personalization's headers together
    split = body(
        headers={"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        personalizations=[
            {
                "to": [{"email": "b@example.com"}],
                "headers": {"list-unsubscribe": "<https://a.example/u>"},
            }
        ],
    )
    [r] = run(split)
    assert set(r["content"]["headers"]) == {"List-Unsubscribe-Post", "list-unsubscribe"}
    assert "headers" in "".join(
        str(k) for k in problems(body(headers={"List-Unsubscribe-Post": "yes"}))
    )


def test_a_personalizations_header_replaces_the_messages_in_any_case() -> None:
    b = body(
        headers={"X-Campaign": "all"},
        personalizations=[{"to": [{"email": "b@example.com"}], "headers": {"x-campaign": "own"}}],
    )
    [r] = run(b)
    assert r["content"]["headers"] == {"x-campaign": "own"}


def test_lf_bodies_and_non_ascii_texts_are_accepted() -> None:
    [r] = run(
        body(
            subject="Grüße\tund mehr",
            content=[{"type": "text/plain", "value": "line one\nline two\n"}],
            categories=["Bücher"],
        )
    )
    assert r["content"]["text"] == "line one\nline two\n"  # CRLF on the wire, not in the record


def test_sandbox_mode_is_carried_and_validated() -> None:
    [r] = run(body(mail_settings={"sandbox_mode": {"enable": True}}))
    assert r["sandbox"] is True
    default_codec().encode("EmailRequest", r)
    [r] = run(
        body(
            mail_settings={"sandbox_mode": {"enable": False}},
            tracking_settings={"click_tracking": {"enable": True}},
        )
    )
    assert r["sandbox"] is False
    found = problems(body(mail_settings={"sandbox_mode": {"enable": "yes"}}, tracking_settings=[]))
    assert "mail_settings.sandbox_mode.enable" in found
    assert "tracking_settings" in found
    # a sandbox send is validated like any other
    assert "from.email" in problems(
        body(mail_settings={"sandbox_mode": {"enable": True}}, **{"from": {"email": "x"}})
    )
