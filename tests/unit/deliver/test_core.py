"""The delivery stage's decisions with an injected clock: triage, conclusions, the retry ladder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from streams.contract.build import lane_of, task_id
from streams.deliver.core import conclude, failed, flush_now, postpone, triage
from streams.deliver.retry import RetryPolicy
from streams.mail.replies import Stage, TransportErrorKind, classify, transport_error

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy()


def task(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task_id": task_id("m1", "bob@normal.example"),
        "message_id": "m1",
        "request_id": "m1",
        "tenant": "acme",
        "priority": "normal",
        "domain": "normal.example",
        "from": {"email": "news@acme.example", "name": None},
        "reply_to": None,
        "recipient": {
            "email": "bob@normal.example",
            "name": None,
            "kind": "to",
            "substitutions": {},
            "custom_args": {"r": "1"},
        },
        "content": {
            "subject": "hi",
            "text": "x",
            "html": None,
            "template_id": None,
            "headers": {},
            "attachments": [],
        },
        "substitutions": {},
        "categories": ["welcome"],
        "custom_args": {"campaign": "c1"},
        "attempt": 0,
        "not_before": None,
        "first_attempt_at": None,
        "created_at": T0,
    }
    base.update(kw)
    return base


def test_lanes_and_stable_task_ids() -> None:
    assert lane_of("critical") == lane_of("high") == "tx"
    assert lane_of("normal") == lane_of("bulk") == "bulk"
    assert task_id("m1", "Bob@X.example") == task_id("m1", "bob@x.example")
    assert task_id("m1", "a@x.example") != task_id("m2", "a@x.example")


def test_triage_order() -> None:
    kw: dict[str, Any] = {"already_sent": False, "suppressed": None, "policy": POLICY}
    assert triage(task(), T0, verdict="deliver", **kw).step == "send"
    dropped = triage(task(), T0, verdict="delete", **{**kw, "already_sent": True})
    assert dropped.step == "drop"
    assert dropped.event is not None
    assert dropped.event["reason"] == "deleted"
    assert triage(task(), T0, verdict="deliver", **{**kw, "already_sent": True}).step == "skip"
    held = triage(task(), T0, verdict="hold", **kw)
    assert held.step == "hold"
    assert held.event is not None
    assert held.event["type"] == "deferred"
    sup = triage(task(), T0, verdict="deliver", **{**kw, "suppressed": "suppressed"})
    assert sup.event is not None
    assert sup.event["reason"] == "suppressed"
    later = T0 + timedelta(hours=1)
    wait = triage(task(not_before=later), T0, verdict="deliver", **kw)
    assert wait.step == "wait"
    assert wait.until == later


def test_triage_expires_a_task_past_its_max_age() -> None:
    old = task(attempt=9, first_attempt_at=T0)
    step = triage(
        old,
        T0 + timedelta(days=5),
        verdict="deliver",
        already_sent=False,
        suppressed="suppressed",
        policy=POLICY,
    )
    assert step.step == "expire"
    assert step.event is not None
    assert step.event["type"] == "bounced"
    assert step.event["bounce_class"] == "expired"


def test_delivered_carries_the_reply_and_args() -> None:
    outcome = classify(250, None, "2.0.0 queued as ABC", Stage.AFTER_DATA)
    c = conclude(task(), outcome, T0, POLICY, "mx.normal.example")
    assert c.delivered
    assert c.final
    assert c.retry is None
    assert c.event["type"] == "delivered"
    assert c.event["smtp"] == {
        "code": 250,
        "enhanced_code": "2.0.0",
        "message": "2.0.0 queued as ABC",
    }
    assert c.event["custom_args"] == {"campaign": "c1", "r": "1"}
    assert c.event["categories"] == ["welcome"]
    assert c.event["attempt"] == 1


def test_a_failed_event_carries_the_args_like_every_other() -> None:
    e = failed(task(attempt=2), T0, "render.undefined: name")
    assert e["type"] == "failed"
    assert e["reason"] == "render.undefined: name"
    assert e["attempt"] == 2
    assert e["custom_args"] == {"campaign": "c1", "r": "1"}
    assert e["categories"] == ["welcome"]


def test_hard_bounce_suppresses_soft_policy_bounce_does_not() -> None:
    hard = conclude(task(), classify(550, None, "5.1.1 user unknown", Stage.RCPT), T0, POLICY)
    assert hard.event["type"] == "bounced"
    assert hard.suppress
    assert hard.event["bounce_class"] == "user_unknown"
    assert hard.event["smtp"]["enhanced_code"] == "5.1.1"
    blocked = conclude(
        task(), classify(554, None, "5.7.1 blocked by policy", Stage.RCPT), T0, POLICY
    )
    assert blocked.event["type"] == "bounced"
    assert not blocked.suppress


def test_retry_ladder_in_the_spirit_of_postfix() -> None:
    t = task()
    now = T0
    waits = []
    outcome = classify(451, None, "4.7.1 greylisted", Stage.RCPT)
    for _ in range(8):
        c = conclude(t, outcome, now, POLICY)
        assert c.event["type"] == "deferred"
        assert c.retry is not None
        assert not c.final
        waits.append(c.event["retry_after_ms"] // 1000)
        t = c.retry
        now = t["not_before"]
    assert waits == [300, 600, 1200, 2400, 4800, 9600, 14400, 14400]
    assert t["first_attempt_at"] == T0
    assert t["attempt"] == 8


def test_expiry_after_five_days_becomes_a_bounce() -> None:
    t = task(attempt=30, first_attempt_at=T0)
    c = conclude(t, transport_error(TransportErrorKind.TIMEOUT), T0 + timedelta(days=5), POLICY)
    assert c.event["type"] == "bounced"
    assert c.event["bounce_class"] == "expired"
    assert c.retry is None
    assert c.final
    assert not c.suppress


def test_the_last_retry_is_pulled_in_to_the_deadline() -> None:
    t = task(attempt=20, first_attempt_at=T0)
    now = T0 + timedelta(days=5) - timedelta(minutes=10)
    c = conclude(t, transport_error(TransportErrorKind.REFUSED), now, POLICY)
    assert c.retry is not None
    assert c.retry["not_before"] == T0 + timedelta(days=5)


def test_postpone_keeps_the_attempt() -> None:
    t = task(attempt=2)
    c = postpone(t, T0 + timedelta(seconds=90), "throttled: x", T0)
    assert c.retry is not None
    assert c.retry["attempt"] == 2
    assert c.event["retry_after_ms"] == 90_000
    assert c.event["reason"] == "throttled: x"


def test_flush_sends_deferred_mail_now_but_keeps_a_schedule() -> None:
    deferred = task(attempt=1, not_before=T0 + timedelta(hours=1))
    flushed = flush_now(deferred)
    assert flushed is not None
    assert flushed["not_before"] is None
    assert flushed["attempt"] == 1
    kw: dict[str, Any] = {"already_sent": False, "suppressed": None, "policy": POLICY}
    assert triage(deferred, T0, verdict="deliver", **kw).step == "wait"
    assert triage(flushed, T0, verdict="deliver", **kw).step == "send"
    scheduled = task(attempt=0, not_before=T0 + timedelta(hours=1))
    assert flush_now(scheduled) is None


def test_event_ids_differ_per_attempt_and_repeat_for_a_replay() -> None:
    outcome = classify(451, None, "4.7.1 try later", Stage.RCPT)
    first = conclude(task(), outcome, T0, POLICY)
    again = conclude(task(), outcome, T0 + timedelta(seconds=3), POLICY)
    second = conclude(task(attempt=1, first_attempt_at=T0), outcome, T0, POLICY)
    assert first.event["event_id"] == again.event["event_id"]
    assert first.event["event_id"] != second.event["event_id"]
