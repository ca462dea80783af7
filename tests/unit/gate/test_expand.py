"""A send request becomes one task per valid, unsuppressed recipient, on its priority's lane."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streams.db.tenants import Directory
from streams.errors import InvalidContentError
from streams.gate.expand import expand

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def request(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": "r1",
        "tenant": "acme",
        "operation": "send",
        "priority": "high",
        "from": {"email": "news@acme.example", "name": "Acme"},
        "reply_to": None,
        "recipients": [
            {
                "email": "a@normal.example",
                "name": None,
                "kind": "to",
                "substitutions": {},
                "custom_args": {},
            },
        ],
        "content": {
            "subject": "s",
            "text": "t",
            "html": None,
            "template_id": None,
            "headers": {},
            "attachments": [],
        },
        "substitutions": {},
        "categories": [],
        "custom_args": {"c": "1"},
        "send_at": None,
        "created_at": NOW,
    }
    base.update(kw)
    return base


def _nobody(*_: object) -> str | None:
    return None


def _gone(tenant: str, address: str, group: int | None) -> str | None:
    return "suppressed" if address.lower() == "gone@normal.example" else None


def rcpt(email: str) -> dict[str, Any]:
    return {"email": email, "name": None, "kind": "to", "substitutions": {}, "custom_args": {}}


def test_one_task_per_distinct_valid_recipient() -> None:
    r = request(
        recipients=[
            rcpt("a@normal.example"),
            rcpt("A@Normal.example"),
            rcpt("bad@@x"),
            rcpt("b@bücher.example"),
            rcpt("gone@normal.example"),
        ]
    )
    out = expand(r, NOW, _gone)
    assert [(d, lane) for d, lane, _ in out.tasks] == [
        ("normal.example", "tx"),
        ("xn--bcher-kva.example", "tx"),
    ]
    assert out.tasks[1][2]["recipient"]["email"] == "b@xn--bcher-kva.example"
    reasons = sorted(e["reason"].split(":")[0] for e in out.events)
    assert reasons == ["invalid_address", "suppressed"]
    assert all(e["type"] == "dropped" and e["message_id"] == "r1" for e in out.events)
    first = out.tasks[0][2]
    assert first["attempt"] == 0
    assert first["custom_args"] == {"c": "1"}


def test_bulk_priorities_take_the_bulk_lane_and_send_at_becomes_not_before() -> None:
    later = datetime(2026, 12, 1, tzinfo=UTC)
    out = expand(request(priority="bulk", send_at=later), NOW, _nobody)
    _, lane, task = out.tasks[0]
    assert lane == "bulk"
    assert task["not_before"] == later


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"from": None}, "from"),
        ({"from": {"email": "not an address", "name": None}}, "from"),
        ({"content": None}, "content"),
        ({"recipients": []}, "recipients"),
    ],
)
def test_unsendable_requests_are_refused_whole(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidContentError) as info:
        expand(request(**change), NOW, _nobody)
    assert info.value.field == field


def test_a_sandbox_request_is_recorded_and_never_queued() -> None:
    r = request(
        sandbox=True,
        recipients=[rcpt("a@normal.example"), rcpt("gone@normal.example"), rcpt("bad@@x")],
    )
    out = expand(r, NOW, _gone)
    assert out.tasks == []
    assert [(e["recipient"], e["reason"].split(":")[0]) for e in out.events] == [
        ("a@normal.example", "sandbox"),
        ("gone@normal.example", "suppressed"),  # what would have happened, as for real
        ("bad@@x", "invalid_address"),
    ]


def test_a_non_ascii_local_part_is_dropped_not_failed_later() -> None:
    out = expand(request(recipients=[rcpt("jörg@normal.example")]), NOW, _nobody)
    assert out.tasks == []
    assert "SMTPUTF8" in out.events[0]["reason"]


def test_who_left_the_group_gets_none_of_its_mail_and_the_rest_still_does() -> None:
    directory = Directory(suppressed={("acme", "all@normal.example")})
    directory.left_groups = {("acme", 7, "news@normal.example")}
    people = ["all@normal.example", "news@normal.example", "stays@normal.example"]

    def reasons(group: int | None) -> tuple[dict[str, str | None], list[str]]:
        out = expand(
            request(recipients=[rcpt(p) for p in people], asm_group_id=group),
            NOW,
            directory.suppression,
        )
        dropped = {e["recipient"] or "": e["reason"] for e in out.events}
        assert all(e["asm_group_id"] == group for e in out.events)
        assert all(t.get("asm_group_id") == group for _d, _l, t in out.tasks)
        return dropped, [t["recipient"]["email"] for _d, _l, t in out.tasks]

    # mail of group 7: the global list and the group's members are dropped, each saying why
    assert reasons(7) == (
        {"all@normal.example": "suppressed", "news@normal.example": "group_suppressed"},
        ["stays@normal.example"],
    )
    # mail of another group, or of none: leaving group 7 stops nothing else
    for other in (8, None):
        assert reasons(other) == (
            {"all@normal.example": "suppressed"},
            ["news@normal.example", "stays@normal.example"],
        )
