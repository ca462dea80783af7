"""The API's pure parts: verify jobs, webhook translation, query parameters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.api import params
from streams.api.tracking import translate_webhook
from streams.api.verifyjobs import CHUNK, parse_batch, parse_single, plan, requests
from streams.contract.codec import default_codec
from streams.contract.ids import MessageIds
from streams.errors import IngressValidationError
from streams.secret import ServerSecret

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
IDS = MessageIds(ServerSecret(b"s" * 32))


def fields(exc: pytest.ExceptionInfo[IngressValidationError]) -> set[str | None]:
    return {f for f, _ in exc.value.problems}


def test_single_verify_body() -> None:
    assert parse_single({"email": " a@b.example "}, 10.0) == ("a@b.example", None, 10.0)
    assert parse_single({"email": "x", "smtp_probe": True, "timeout": 0}, 10.0) == ("x", True, 0.0)
    with pytest.raises(IngressValidationError) as exc:
        parse_single({"email": "", "smtp_probe": "yes", "timeout": True}, 10.0)
    assert fields(exc) == {"email", "smtp_probe", "timeout"}
    with pytest.raises(IngressValidationError) as exc:
        parse_single([], 10.0)
    assert fields(exc) == {"body", "email"}


def test_batch_body_dedups_in_order_and_reports_every_bad_item() -> None:
    emails, probe = parse_batch({"emails": ["b@x", "a@x", "b@x"], "smtp_probe": False})
    assert (emails, probe) == (["b@x", "a@x"], False)
    with pytest.raises(IngressValidationError) as exc:
        parse_batch({"emails": ["ok@x", 3, " ", "y" * 400]})
    assert fields(exc) == {"emails.1", "emails.2", "emails.3"}
    with pytest.raises(IngressValidationError) as exc:
        parse_batch({"emails": []})
    assert fields(exc) == {"emails"}


def test_a_job_is_split_into_requests_the_gate_accepts() -> None:
    addresses = [f"u{i}@x.example" for i in range(CHUNK + 1)]
    job = plan("j1", addresses, None)
    assert job.request_ids == ["j1.0", "j1.1"]
    records = requests(job, tenant="t", priority="high", now=NOW)
    assert [len(r["recipients"]) for r in records] == [CHUNK, 1]
    assert {r["idempotency_key"] for r in records} == {"verify:j1.0", "verify:j1.1"}
    codec = default_codec()
    for r in records:
        _, decoded = codec.decode(codec.encode("EmailRequest", r), expected="EmailRequest")
        assert decoded["operation"] == "verify"
    assert plan("j2", ["a@x"], True).request_ids == ["j2"]


def test_webhook_events_map_to_track_requests_with_stable_ids() -> None:
    own = IDS.message_id("t", "order-1")
    body = [
        {
            "event": "open",
            "email": "a@x.example",
            "sg_message_id": f"{own}.filter0001.123",
            "timestamp": 1_700_000_000,
        },
        {
            "event": "spamreport",
            "email": "a@x.example",
            "message_id": own,
            "timestamp": "2026-11-23T10:00:00",
        },
    ]
    first = translate_webhook(body, tenant="t", ids=IDS, now=NOW).accepted
    again = translate_webhook(body, tenant="t", ids=IDS, now=NOW).accepted
    assert [r["track"]["event_type"] for r in first] == ["opened", "complained"]
    assert [r["request_id"] for r in first] == [r["request_id"] for r in again]
    assert first[1]["track"]["occurred_at"] == datetime(2026, 11, 23, 10, tzinfo=UTC)
    codec = default_codec()
    for r in first:
        codec.encode("EmailRequest", r)


def test_webhook_events_not_the_callers_are_refused_one_by_one() -> None:
    own = IDS.message_id("t", "order-1")
    foreign = IDS.message_id("u", "order-1")  # tenant u's message, same Idempotency-Key
    soon, later = NOW.timestamp() + 240, NOW.timestamp() + 400
    body = [
        {"event": "open", "email": "a@x.example", "message_id": own, "timestamp": soon},
        {"event": "spamreport", "email": "a@x.example", "message_id": foreign},
        {"event": "click", "email": "a@x.example", "message_id": own, "timestamp": later},
        {"event": "open", "email": "a@x.example", "message_id": "legacy-1"},
    ]
    hook = translate_webhook(body, tenant="t", ids=IDS, now=NOW)
    assert [r["track"]["message_id"] for r in hook.accepted] == [own]
    assert [f for f, _ in hook.refused] == ["2.timestamp"]
    assert "400 s in the future" in hook.refused[0][1]
    # ids the tag does not vouch for wait for the tenant's messages table
    assert [i for i, _ in hook.unverified] == [1, 3]
    assert hook.message_ids() == sorted({foreign, "legacy-1"})
    hook.resolve({"legacy-1"})
    assert [r["track"]["message_id"] for r in hook.accepted] == [own, "legacy-1"]
    assert hook.refused[1] == (
        "1.message_id",
        f"message id {foreign!r} is not one of your messages",
    )
    assert hook.unverified == []


def test_webhook_events_about_an_ids_personalizations_resolve_by_its_base() -> None:
    body = [{"event": "open", "email": "a@x.example", "message_id": "legacy-2.3"}]
    hook = translate_webhook(body, tenant="t", ids=IDS, now=NOW)
    assert hook.message_ids() == ["legacy-2", "legacy-2.3"]
    hook.resolve({"legacy-2"})
    assert len(hook.accepted) == 1


def test_webhook_problems_are_all_reported() -> None:
    with pytest.raises(IngressValidationError) as exc:
        translate_webhook(
            [
                {"event": "bounce"},
                {
                    "event": "click",
                    "email": "a@x",
                    "message_id": "m",
                    "timestamp": "soon",
                    "url": 5,
                },
            ],
            tenant="t",
            ids=IDS,
            now=NOW,
        )
    assert fields(exc) == {"0.event", "0.message_id", "0.email", "1.timestamp", "1.url"}
    with pytest.raises(IngressValidationError):
        translate_webhook([], tenant="t", ids=IDS, now=NOW)


def test_query_parameters() -> None:
    assert params.limit({}) == 100
    assert params.limit({"limit": "5"}) == 5
    for bad in ("0", "-1", "x", "1001"):
        with pytest.raises(IngressValidationError):
            params.limit({"limit": bad})
    assert params.cursor({"cursor": "42"}) == 42
    with pytest.raises(IngressValidationError):
        params.cursor({"cursor": "4x"})
    assert params.since({"since": "2026-11-23T10:00:00"}) == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert params.since({"since": "0"}) == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(IngressValidationError):
        params.since({"since": "yesterday"})
    assert params.offset({"offset": "3"}) == 3


def test_every_route_is_described_in_the_spec() -> None:
    from streams.api.openapi import SPEC
    from streams.api.server import ROUTES

    for method, path, _scope, _handler in ROUTES:
        assert method.lower() in SPEC["paths"][path], (method, path)


def test_the_api_vocabularies_are_the_schemas() -> None:
    from streams.api.read_routes import EVENT_TYPES
    from streams.api.sendgrid import PRIORITIES
    from streams.api.tracking import TRACK_TYPES

    schemas = default_codec().schemas
    assert {"processed", "delivered", "unsubscribed"} <= set(EVENT_TYPES)
    # pure modules keep their own lists; they must not drift from the contract
    assert schemas.symbols("EmailRequest", "priority") == PRIORITIES
    track = next(
        t
        for f in schemas.current["EmailRequest"].raw["fields"]
        if f["name"] == "track"
        for t in f["type"]
        if isinstance(t, dict)
    )
    kinds = next(f["type"]["symbols"] for f in track["fields"] if f["name"] == "event_type")
    assert set(TRACK_TYPES.values()) == set(kinds)
