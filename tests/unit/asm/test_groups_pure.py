"""Suppression groups in the pure parts: the record and its key, the rows the sinks land, the
group in the unsubscribe link, what an unsubscribe from a group records, its webhook event, and
the ``asm`` object of a mail/send body."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sinks.mapping import map_record
from sinks.tables import table_specs
from streams.api.sendgrid import translate
from streams.contract.build import make_event, make_suppression, parse_suppression_key, record_key
from streams.contract.codec import default_codec
from streams.deliver.unsubscribe import one_click
from streams.errors import IngressValidationError
from streams.inbound.decide import Target, unsubscribed
from streams.mail.unsubscribe import MAX_GROUP, decode
from streams.secret import ServerSecret
from streams.settings import Settings
from streams.webhooks.mapping import sendgrid_event, wanted
from tests.unit.deliver.test_unsubscribe_headers import BASE, task

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
SECRET = ServerSecret(bytes(range(32)))


def test_a_groups_member_has_a_key_of_its_own_beside_the_global_entry() -> None:
    member = make_suppression("acme", "Ann@Example.com", "unsubscribe", "api", NOW, group_id=7)
    everywhere = make_suppression("acme", "ann@example.com", "unsubscribe", "api", NOW)
    assert record_key(member) == b"acme\x1fann@example.com\x1f7"
    assert record_key(everywhere) == b"acme\x1fann@example.com"
    assert parse_suppression_key(record_key(member)) == ("acme", "ann@example.com", 7)
    assert parse_suppression_key(record_key(everywhere)) == ("acme", "ann@example.com", None)
    for bad in (
        b"acme",
        b"acme\x1f",
        b"acme\x1fa@b\x1fseven",
        b"acme\x1fa@b\x1f\xc2\xb2",
        b"a\x1fb\x1f1\x1f2",
    ):
        assert parse_suppression_key(bad) is None, bad


class _Msg:
    def __init__(self, key: bytes, value: bytes | None) -> None:
        self.topic, self.partition, self.offset, self.timestamp = "postwire.suppressions", 0, 1, 1
        self.key, self.value, self.headers = key, value, []


def _rows(key: bytes, value: bytes | None) -> dict[str, Any]:
    specs = table_specs(Settings())
    now = lambda: NOW  # noqa: E731
    return {
        table: map_record(specs[table], default_codec(), _Msg(key, value), now).row  # type: ignore[arg-type]
        for table in ("suppressions", "group_suppressions")
    }


def test_the_sinks_land_a_member_in_group_suppressions_and_nowhere_else() -> None:
    codec = default_codec()
    member = make_suppression("acme", "ann@example.com", "unsubscribe", "api", NOW, group_id=7)
    rows = _rows(record_key(member), codec.encode("Suppression", member))
    assert rows["suppressions"] is None
    assert rows["group_suppressions"][:4] == ("acme", 7, "ann@example.com", "unsubscribe")
    # and its tombstone lifts the member only
    rows = _rows(record_key(member), None)
    assert rows["suppressions"] is None
    assert rows["group_suppressions"][:5] == ("acme", 7, "ann@example.com", "removed", "tombstone")
    everywhere = make_suppression("acme", "ann@example.com", "unsubscribe", "api", NOW)
    rows = _rows(record_key(everywhere), None)
    assert rows["group_suppressions"] is None
    assert rows["suppressions"][:3] == ("acme", "ann@example.com", "removed")


def test_mail_of_a_group_carries_the_group_in_its_unsubscribe_link() -> None:
    add = one_click(SECRET, BASE, "bounces.example.net")
    lines = add(task() | {"asm_group_id": 42})  # type: ignore[arg-type]
    token = lines.split(b"/u/", 1)[1].split(b">", 1)[0].decode()
    assert decode(SECRET, token).group_id == 42
    plain = add(task())  # type: ignore[arg-type]
    assert decode(SECRET, plain.split(b"/u/", 1)[1].split(b">", 1)[0].decode()).group_id is None


def test_an_unsubscribe_from_a_group_leaves_that_group_only() -> None:
    target = Target("shop", "m1", "ann@example.com", "r1", ("news",), {}, asm_group_id=42)
    verdict = unsubscribed(target, "one-click", NOW)
    [event] = verdict.events
    [left] = verdict.suppressions
    assert event["asm_group_id"] == 42
    assert (left["group_id"], left["reason"], left["source"]) == (42, "unsubscribe", "inbound")
    assert record_key(left) == b"shop\x1fann@example.com\x1f42"
    # SendGrid's name for it on the webhook, and the group id beside it
    out = sendgrid_event(event)
    assert (out["event"], out["asm_group_id"]) == ("group_unsubscribe", 42)
    assert wanted(event, ["group_unsubscribe"])
    assert not wanted(event, ["unsubscribe"])
    everywhere = make_event("unsubscribed", "shop", NOW, recipient="ann@example.com")
    assert sendgrid_event(everywhere)["event"] == "unsubscribe"
    assert "asm_group_id" not in sendgrid_event(everywhere)


def _body(**extra: Any) -> dict[str, Any]:
    return {
        "personalizations": [
            {"to": [{"email": "ann@example.com"}]},
            {"to": [{"email": "b@x.org"}]},
        ],
        "from": {"email": "news@shop.example"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hi"}],
        **extra,
    }


def _translate(body: dict[str, Any]) -> list[Any]:
    return translate(
        body, tenant="shop", message_id="m1", idempotency_key=None, priority="bulk", now=NOW
    )


def test_the_asm_group_goes_on_every_personalization() -> None:
    records = _translate(_body(asm={"group_id": 42, "groups_to_display": [42, 43]}))
    assert [r["asm_group_id"] for r in records] == [42, 42]
    assert [r["asm_group_id"] for r in _translate(_body())] == [None, None]
    # the record says so on the wire too
    codec = default_codec()
    assert codec.decode(codec.encode("EmailRequest", records[0]))[1]["asm_group_id"] == 42


@pytest.mark.parametrize(
    ("asm", "field"),
    [
        ({}, "asm.group_id"),
        ({"group_id": "42"}, "asm.group_id"),
        ({"group_id": True}, "asm.group_id"),
        ({"group_id": 0}, "asm.group_id"),
        ({"group_id": MAX_GROUP + 1}, "asm.group_id"),
        ({"group_id": 1, "groups_to_display": [1, "x"]}, "asm.groups_to_display.1"),
        ({"group_id": 1, "groups_to_display": list(range(1, 27))}, "asm.groups_to_display"),
        ([1], "asm"),
    ],
)
def test_a_bad_asm_object_is_refused_at_the_door(asm: Any, field: str) -> None:
    with pytest.raises(IngressValidationError) as caught:
        _translate(_body(asm=asm))
    assert field in [f for f, _m in caught.value.problems]
