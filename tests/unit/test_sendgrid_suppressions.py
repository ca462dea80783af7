"""SendGrid's suppression lists over the one table: which list a reason shows in, the row shape,
the query and body rules (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.api.sendgrid_suppressions import NAMES, delete_body, kind_of, row, time_range
from streams.errors import IngressValidationError


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("unsubscribe", "unsubscribes"),
        ("complaint", "spam_reports"),
        ("policy", "blocks"),
        ("invalid", "invalid_emails"),
        ("user_unknown", "bounces"),
        ("mailbox_disabled", "bounces"),
        ("manual", "bounces"),  # every other reason: each entry shows in exactly one list
    ],
)
def test_each_reason_shows_in_one_list(reason: str, kind: str) -> None:
    assert kind_of(reason) == kind
    assert kind in NAMES


def test_a_row_is_sendgrids_shape() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    bounced = row(
        {
            "address": "ann@example.com",
            "reason": "user_unknown",
            "detail": "550 5.1.1 no such user",
            "created_at": at,
        }
    )
    assert bounced == {
        "created": int(at.timestamp()),
        "email": "ann@example.com",
        "reason": "550 5.1.1 no such user",
        "status": "5.1.1",
    }
    plain = row(
        {"address": "b@example.com", "reason": "unsubscribe", "detail": None, "created_at": at}
    )
    assert plain["reason"] == "unsubscribe"
    assert plain["status"] == ""


def test_time_range() -> None:
    start, end = time_range({"start_time": "100", "end_time": "200"})
    assert (start.timestamp(), end.timestamp()) == (100, 200)
    start, end = time_range({})
    assert start < end
    with pytest.raises(IngressValidationError):
        time_range({"start_time": "yesterday"})
    with pytest.raises(IngressValidationError):
        time_range({"start_time": "300", "end_time": "200"})
    for huge in ("253402300800", "6679292610044518400"):  # past what datetime holds
        with pytest.raises(IngressValidationError):
            time_range({"start_time": huge})


def test_delete_bodies() -> None:
    assert delete_body({"delete_all": True}) is None
    assert delete_body({"emails": ["A@x.example", "a@x.example", "b@x.example"]}) == [
        "a@x.example",
        "b@x.example",
    ]
    for bad in (
        {},
        {"emails": []},
        {"emails": ["nope"]},
        {"delete_all": True, "emails": ["a@b"]},
        [],
    ):
        with pytest.raises(IngressValidationError):
            delete_body(bad)
