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
