from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streams.contract.build import recipient
from streams.db.tenants import ApiKey, Directory, Tenant, api_key_digest
from streams.errors import AuthError
from streams.gate.admission import Limits
from streams.gate.core import ADMITTED, Arrival, Seen, decide, replayed_memo, unknown_credentials
from streams.kafka.records import SourcePosition
from streams.mail.limits import MAX_RECIPIENTS

NOW = datetime(2026, 11, 23, 12, 0, 0, 250000, tzinfo=UTC)
SRC = SourcePosition("postwire.requests", 0, 7)


def directory(policy: str = "defer", probe: bool = False) -> Directory:
    d = Directory()
    d.tenants["acme"] = Tenant("acme", Limits(2, 100, 1000), policy, probe)
    d.tenants["other"] = Tenant("other", Limits(2, 100, 1000), policy, probe)
    d.keys[api_key_digest("good")] = ApiKey(
        "k1", "acme", api_key_digest("good"), frozenset({"send", "verify"}), False
    )
    d.keys[api_key_digest("sendonly")] = ApiKey(
        "k2", "acme", api_key_digest("sendonly"), frozenset({"send"}), False
    )
    d.keys[api_key_digest("old")] = ApiKey(
        "k3", "acme", api_key_digest("old"), frozenset({"verify"}), True
    )
    return d


def request(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": "r1",
        "tenant": "acme",
        "api_key": "good",
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
) -> Any:
    return decide(
        req,
        d or directory(),
        Seen(entry, counts or {}, memo),
        Arrival(SRC, b"raw", b"acme"),
        NOW,
        dedup_ttl=60,
    )


@pytest.mark.parametrize(
    ("key", "tenant", "operation", "code"),
    [
        (None, "acme", "verify", "auth.missing_key"),
        ("nope", "acme", "verify", "auth.bad_key"),
        ("good", "other", "verify", "auth.bad_key"),  # another tenant's key
        ("old", "acme", "verify", "auth.revoked_key"),
        ("sendonly", "acme", "verify", "auth.scope"),
    ],
)
def test_authentication_failures_are_dead_lettered(
    key: str | None, tenant: str, operation: str, code: str
) -> None:
    result = run(request(api_key=key, tenant=tenant, operation=operation))
    assert result.outcome == "rejected"
    assert result.rejection["error_code"] == code
    assert result.rejection["tenant"] == tenant
    assert result.rejection["raw"] == b"raw"
    assert not result.count


@pytest.mark.parametrize(
    ("key", "tenant", "retry"),
    [
        ("nope", "acme", True),
        ("good", "other", True),
        ("old", "acme", False),
        (None, "acme", False),
    ],
)
def test_only_unknown_credentials_ask_for_a_fresh_directory(
    key: str | None, tenant: str, retry: bool
) -> None:
    # a key created a moment ago may be missing from the snapshot; a revoked or absent one is not
    assert unknown_credentials(run(request(api_key=key, tenant=tenant))) is retry
    assert not unknown_credentials(run(request()))


def test_directory_authenticate_unknown_tenant() -> None:
    d = directory()
    d.keys[api_key_digest("ghost")] = ApiKey(
        "k9", "ghost", api_key_digest("ghost"), frozenset({"verify"}), False
    )
    with pytest.raises(AuthError) as info:
        d.authenticate("ghost", "ghost", "verify")
    assert info.value.code == "auth.unknown_tenant"


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
