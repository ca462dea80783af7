from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.contract.build import recipient
from streams.contract.signing import KEY_ID, SIGNATURE, SIGNER, sign
from streams.db.tenants import Directory
from streams.gate.core import ADMITTED, Arrival, Seen, decide, replayed_memo, unknown_credentials
from streams.mail.limits import MAX_RECIPIENTS
from tests.unit.gate.helpers import (
    RAW,
    SRC,
    TRUST,
    directory,
    ingress_signed,
    key_signed,
)

NOW = datetime(2026, 11, 23, 12, 0, 0, 250000, tzinfo=UTC)


def request(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": "r1",
        "tenant": "acme",
        "operation": "verify",
        "idempotency_key": None,
        "priority": "normal",
        "smtp_probe": None,
        "recipients": [
            recipient("a@x.example"),
            recipient("b@y.example"),
            recipient("a@x.example"),
        ],
        "categories": ["c"],
        "custom_args": {},
        "track": None,
        "created_at": NOW,
    }
    base.update(extra)
    return base


def run(
    req: dict[str, Any],
    d: Directory | None = None,
    entry: Any = None,
    counts: dict[str, int] | None = None,
    memo: dict[str, Any] | None = None,
    arrival: Arrival | None = None,
) -> Any:
    return decide(
        req,
        d or directory(),
        Seen(entry, counts or {}, memo),
        arrival or key_signed(),
        NOW,
        trust=TRUST,
        dedup_ttl=60,
    )


@pytest.mark.parametrize(
    ("arrival", "tenant", "operation", "code"),
    [
        (Arrival(SRC, RAW, b"acme"), "acme", "verify", "auth.unsigned"),
        (key_signed("k9", "good"), "acme", "verify", "auth.unknown_key"),
        (key_signed("k1", "not the key"), "acme", "verify", "auth.bad_signature"),
        (key_signed("k1", "sendonly"), "acme", "verify", "auth.bad_signature"),  # k2's key
        (key_signed("k1", "good"), "other", "verify", "auth.wrong_tenant"),
        (key_signed("k3", "old"), "acme", "verify", "auth.revoked_key"),
        (key_signed("k2", "sendonly"), "acme", "verify", "auth.scope"),
        (key_signed("k4", "unsealed"), "acme", "verify", "auth.key_not_sealed"),
        (key_signed("k5", "broken"), "acme", "verify", "auth.key_not_sealed"),
        (ingress_signed("k1", signing_key=b"x" * 32), "acme", "verify", "auth.bad_signature"),
        (ingress_signed("k3"), "acme", "verify", "auth.revoked_key"),
        (ingress_signed("k9"), "acme", "verify", "auth.unknown_key"),
    ],
)
def test_authentication_failures_are_dead_lettered(
    arrival: Arrival, tenant: str, operation: str, code: str
) -> None:
    result = run(request(tenant=tenant, operation=operation), arrival=arrival)
    assert result.outcome == "rejected"
    assert result.rejection["error_code"] == code
    assert result.rejection["tenant"] == tenant
    assert result.rejection["raw"] == RAW
    assert not result.count


def test_a_record_altered_after_signing_is_refused() -> None:
    signed = key_signed()
    altered = Arrival(SRC, RAW + b"!", b"acme", headers=signed.headers)
    assert run(request(), arrival=altered).rejection["error_code"] == "auth.bad_signature"
    moved = Arrival(SRC, RAW, b"other", headers=signed.headers)  # another record key
    assert run(request(), arrival=moved).rejection["error_code"] == "auth.bad_signature"


def test_a_record_keyed_by_another_than_its_tenant_is_refused() -> None:
    # signed as it is, but partitioned apart from the tenant's rate windows
    rekeyed = sign(RAW, tenant="elsewhere", key_id="k1", api_key="good")
    result = run(request(), arrival=Arrival(SRC, RAW, b"elsewhere", headers=rekeyed))
    assert result.rejection["error_code"] == "auth.wrong_record_key"
    assert "not its tenant 'acme'" in result.rejection["error"]


def test_both_signers_admit_and_the_key_only_knows_why_it_cannot_sign() -> None:
    assert run(request(), arrival=key_signed()).outcome == "admitted"
    assert run(request(), arrival=ingress_signed()).outcome == "admitted"
    # a key made before sealing still works through the ingress, which signs for it
    assert run(request(), arrival=ingress_signed("k4")).outcome == "admitted"
    old = run(request(), arrival=key_signed("k4", "unsealed")).rejection["error"]
    assert "created before keys were sealed" in old
    assert "postwire keys create" in old
    broken = run(request(), arrival=key_signed("k5", "broken")).rejection["error"]
    assert "does not open under this server secret" in broken


def test_a_malformed_signature_header_is_unsigned() -> None:
    headers = [(KEY_ID, b"k1"), (SIGNER, b"key"), (SIGNATURE, b"short")]
    result = run(request(), arrival=Arrival(SRC, RAW, b"acme", headers=headers))
    assert result.rejection["error_code"] == "auth.unsigned"
    assert "64 hex digits" in result.rejection["error"]


def track(message_id: str, at: datetime = NOW) -> dict[str, Any]:
    return request(
        operation="track",
        recipients=[],
        track={
            "event_type": "complained",
            "message_id": message_id,
            "recipient": "bob@x.example",
            "url": None,
            "user_agent": None,
            "ip": None,
            "occurred_at": at,
        },
    )


def test_direct_producers_track_only_their_own_messages() -> None:
    mine = TRUST.ids.message_id("acme", "order-1")
    theirs = TRUST.ids.message_id("other", "order-1")
    assert run(track(mine)).outcome == "admitted"
    assert run(track(f"{mine}.2")).outcome == "admitted"
    for foreign in (theirs, "not-an-issued-id"):
        result = run(track(foreign))
        assert result.rejection["error_code"] == "track.foreign_message"
        assert foreign in result.rejection["error"]
        assert not result.suppressions
    # the ingress checked its own (it also knows ids of mail sent before ids were tagged)
    assert run(track("legacy-id"), arrival=ingress_signed()).outcome == "admitted"


def test_events_dated_in_the_future_are_refused_at_both_doors() -> None:
    mine = TRUST.ids.message_id("acme", "order-1")
    assert run(track(mine, NOW + timedelta(minutes=4))).outcome == "admitted"
    a_year_on = NOW + timedelta(days=365)
    for arrival in (key_signed(), ingress_signed()):
        result = run(track(mine, a_year_on), arrival=arrival)
        assert result.rejection["error_code"] == "track.future_timestamp"
        assert not result.events
        assert not result.suppressions


@pytest.mark.parametrize(
    ("arrival", "tenant", "retry"),
    [
        (key_signed("k9", "good"), "acme", True),  # a key made since the snapshot
        (key_signed("k1"), "ghost", False),  # another tenant's key: no lookup mends that
        (key_signed("k3", "old"), "acme", False),
        (Arrival(SRC, RAW, b"acme"), "acme", False),
    ],
)
def test_only_unknown_credentials_ask_for_a_fresh_directory(
    arrival: Arrival, tenant: str, retry: bool
) -> None:
    # a key created a moment ago may be missing from the snapshot; a revoked or absent one is not
    assert unknown_credentials(run(request(tenant=tenant), arrival=arrival)) is retry
    assert not unknown_credentials(run(request()))


def test_a_key_whose_tenant_is_not_in_the_snapshot_asks_for_one() -> None:
    d = directory()
    del d.tenants["acme"]
    result = run(request(), d)
    assert result.rejection["error_code"] == "auth.unknown_tenant"
    assert unknown_credentials(result)


def test_admitted_verify_request_fans_out_one_task_per_distinct_address() -> None:
    result = run(request())
    assert result.outcome == "admitted"
    assert result.count
    # the tasks are the record of admission: no processed event, no accepted copy
    assert result.events == []
    assert not result.forward
    assert [(domain, t["address"]) for domain, t in result.tasks] == [
        ("x.example", "a@x.example"),
        ("y.example", "b@y.example"),
    ]
    assert all(t["smtp_probe"] is False for _, t in result.tasks)
    # each task carries what the request's row in the requests table needs
    assert {t["recipient_count"] for _, t in result.tasks} == {3}
    assert result.dedup_key is None  # no idempotency key, nothing to remember


def test_probe_flag_from_request_or_tenant_default() -> None:
    assert all(t["smtp_probe"] for _, t in run(request(), directory(probe=True)).tasks)
    assert not any(
        t["smtp_probe"] for _, t in run(request(smtp_probe=False), directory(probe=True)).tasks
    )
    # validate never probes
    assert not any(
        t["smtp_probe"] for _, t in run(request(operation="validate", smtp_probe=True)).tasks
    )


def test_duplicate_idempotency_key_is_dropped() -> None:
    entry = {"request_id": "r0", "expires": NOW.timestamp() + 10}
    result = run(request(idempotency_key="k"), entry=entry)
    assert result.outcome == "duplicate"
    assert [(e["type"], e["reason"]) for e in result.events] == [("dropped", "duplicate")]
    assert not result.tasks


def test_first_idempotency_key_is_remembered() -> None:
    result = run(request(idempotency_key="k"))
    assert result.dedup_key == "acme\x1fk"
    assert result.dedup_entry == {"request_id": "r1", "expires": NOW.timestamp() + 60}


def test_over_the_limit_defers_by_default() -> None:
    result = run(request(idempotency_key="k"), counts={"second": 2})
    assert result.outcome == "deferred"
    assert result.defer_for == pytest.approx(0.75)
    assert result.events[0]["type"] == "deferred"
    assert result.events[0]["retry_after_ms"] == 751
    assert result.dedup_entry is not None  # the key is owned by the deferred request
    assert not result.count


def test_over_the_limit_with_reject_policy_is_throttled() -> None:
    result = run(request(), directory(policy="reject"), counts={"second": 2})
    assert result.outcome == "throttled"
    event = result.events[0]
    assert (event["type"], event["reason"]) == ("throttled", "rate_limit:second")
    assert event["retry_after_ms"] == 751


def test_event_ids_are_stable() -> None:
    # a verify request's events are its throttles and deferrals (admission makes tasks)
    full = {"second": 2}
    first = run(request(), counts=full).events[0]["event_id"]
    assert run(request(), counts=full).events[0]["event_id"] == first
    assert run(request(request_id="r2"), counts=full).events[0]["event_id"] != first


def test_a_replayed_request_repeats_its_decision_without_counting_again() -> None:
    first = run(request())
    assert first.outcome == "admitted"
    assert first.count
    assert first.memo_entry is None  # admissions leave no memo; the offset watermark suffices
    # the window is now full, but this is the same request processed again
    again = run(request(), counts={"second": 2}, memo=ADMITTED)
    assert again.outcome == "admitted"
    assert not again.count
    assert again.memo_entry is None
    assert again.tasks == first.tasks


def test_replays_are_recognised_by_the_partition_watermark() -> None:
    throttled = {"window": "second", "retry_after": 0.5, "expires": 100.0}
    assert replayed_memo(8, None, None, 50.0) is None  # nothing decided yet on this partition
    assert replayed_memo(8, 7, None, 50.0) is None  # beyond the watermark: a new record
    assert replayed_memo(7, 7, None, 50.0) is ADMITTED  # decided, no memo: it was admitted
    assert replayed_memo(3, 7, throttled, 50.0) is throttled
    assert replayed_memo(3, 7, throttled, 150.0) is ADMITTED  # the memo expired


def test_a_replayed_throttle_stays_throttled() -> None:
    first = run(request(), directory(policy="reject"), counts={"second": 2})
    again = run(request(), directory(policy="reject"), memo=first.memo_entry)
    assert again.outcome == "throttled"
    assert again.events[0]["event_id"] == first.events[0]["event_id"]


def test_key_lookups_are_capped_per_second() -> None:
    from streams.db.directory import _Budget

    budget = _Budget(3)
    assert [budget.take(10.1) for _ in range(4)] == [True, True, True, False]
    assert budget.take(10.9) is False
    assert budget.take(11.0) is True


def test_a_direct_producers_request_over_the_limits_is_dead_lettered() -> None:
    many = [recipient(f"u{i}@x.example") for i in range(MAX_RECIPIENTS + 1)]
    result = run(request(recipients=many))
    assert result.outcome == "rejected"
    assert result.rejection["error_code"] == "limits.recipients"
    assert not result.tasks
    assert not result.count  # a refused request takes nothing from the tenant's rate


def test_a_send_that_cannot_be_written_is_dead_lettered_at_the_gate() -> None:
    content = {
        "subject": "Hi\r\nBcc: x@evil.example",
        "text": "t",
        "html": None,
        "template_id": None,
        "headers": {},
        "attachments": [],
    }
    send = request(operation="send", sender=None, content=content)
    send["from"] = {"email": "news@acme.example", "name": None}
    send["reply_to"] = None
    result = run(send)
    assert result.outcome == "rejected"
    assert result.rejection["error_code"] == "render.header_injection"
    assert not result.deliveries
