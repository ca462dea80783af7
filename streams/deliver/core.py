"""The delivery stage's decisions for one task (pure: records, outcomes and time in, steps out).

``triage`` runs before any network work and says whether the task is sent at all; ``conclude``
turns what the receiving server said into the event, the retry and the suppression that follow;
``postpone`` puts a task back without spending an attempt (a throttle or an open circuit breaker
is about us or the destination, not about the message).

Times are ``datetime`` (aware, UTC) as the Avro codec gives them; the retry ladder works in
epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypedDict, Unpack

from streams.contract.build import make_event
from streams.contract.records import DeliveryEvent, DeliveryTask, EventType, SmtpReply
from streams.deliver.control import TaskMeta, Verdict
from streams.deliver.retry import Expire, RetryPolicy, next_attempt
from streams.mail.replies import Category, Disposition, Outcome

__all__ = [
    "Conclusion",
    "Triage",
    "conclude",
    "failed",
    "flush_now",
    "postpone",
    "task_meta",
    "triage",
]


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def task_meta(task: DeliveryTask, released_at: int = 0) -> TaskMeta:
    return TaskMeta(
        task_id=task["task_id"],
        message_id=task["message_id"],
        tenant=task["tenant"],
        domain=task["domain"],
        created_at=_ms(task["created_at"]),
        released_at=released_at,
    )


class _Said(TypedDict, total=False):
    """What an event about a task says beyond what the task itself gives."""

    reason: str | None
    retry_after_ms: int | None
    attempt: int
    smtp: SmtpReply | None
    bounce_class: str | None


def _event(
    task: DeliveryTask, event_type: EventType, now: datetime, **said: Unpack[_Said]
) -> DeliveryEvent:
    recipient = task["recipient"]
    args = {**task["custom_args"], **recipient["custom_args"]}
    return make_event(
        event_type,
        task["tenant"],
        now,
        request_id=task["request_id"],
        message_id=task["message_id"],
        recipient=recipient["email"],
        categories=task["categories"],
        custom_args=args,
        asm_group_id=task.get("asm_group_id"),
        **said,
    )


def failed(task: DeliveryTask, now: datetime, reason: str) -> DeliveryEvent:
    """The event of a task that can never be sent as it is (cannot be rendered or signed)."""
    return _event(task, "failed", now, reason=reason, attempt=task["attempt"])


@dataclass(frozen=True)
class Triage:
    step: Literal["send", "drop", "hold", "skip", "wait", "expire"]
    event: DeliveryEvent | None = None
    until: datetime | None = None  # for "wait": not before this time


def triage(
    task: DeliveryTask,
    now: datetime,
    *,
    verdict: Verdict,
    already_sent: bool,
    suppressed: str | None,
    policy: RetryPolicy,
) -> Triage:
    """Whether to send ``task`` now. The order matters: an operator's delete beats everything,
    a message already accepted by the receiver is never sent again (and says nothing twice), and
    expiry is checked before suppression so a stale message bounces as what it is."""
    if verdict == "delete":
        return Triage(
            "drop", _event(task, "dropped", now, reason="deleted", attempt=task["attempt"])
        )
    if already_sent:
        return Triage("skip")
    if verdict == "hold":
        return Triage("hold", _event(task, "deferred", now, reason="held", attempt=task["attempt"]))
    first = task["first_attempt_at"]
    if first is not None and now.timestamp() >= first.timestamp() + policy.max_age:
        age = now.timestamp() - first.timestamp()
        return Triage("expire", _expired(task, now, age))
    if suppressed is not None:  # why: suppressed, or group_suppressed
        return Triage("drop", _event(task, "dropped", now, reason=suppressed))
    not_before = task["not_before"]
    if not_before is not None and not_before > now:
        return Triage("wait", until=not_before)
    return Triage("send")


def _expired(task: DeliveryTask, now: datetime, age: float) -> DeliveryEvent:
    return _event(
        task,
        "bounced",
        now,
        reason=f"expired: no delivery in {age / 86400:.1f} days of trying",
        bounce_class="expired",
        attempt=task["attempt"],
    )


@dataclass(frozen=True)
class Conclusion:
    event: DeliveryEvent
    retry: DeliveryTask | None = None  # the task to try again, with its attempt and not_before set
    suppress: bool = False  # the address is bad for good: add it to the tenant's list
    delivered: bool = False
    final: bool = True  # no more attempts: the task leaves the queue


def _smtp(outcome: Outcome) -> SmtpReply | None:
    if outcome.code is None:
        return None
    return {"code": outcome.code, "enhanced_code": outcome.enhanced, "message": outcome.text}


def _reason(outcome: Outcome, host: str) -> str:
    where = f" from {host}" if host else ""
    if outcome.code is None:
        return f"{outcome.category}{where} at {outcome.stage}: {outcome.text}"
    enhanced = f" {outcome.enhanced}" if outcome.enhanced else ""
    return f"{outcome.code}{enhanced}{where} at {outcome.stage}: {outcome.text}"


def conclude(
    task: DeliveryTask, outcome: Outcome, now: datetime, policy: RetryPolicy, host: str = ""
) -> Conclusion:
    """What follows attempt number ``task["attempt"] + 1`` ending with ``outcome``."""
    attempt = task["attempt"] + 1
    smtp = _smtp(outcome)
    if outcome.disposition is Disposition.DELIVERED:
        event = _event(task, "delivered", now, smtp=smtp, attempt=attempt, reason=host or None)
        return Conclusion(event, delivered=True)
    if outcome.disposition is Disposition.BOUNCED:
        event = _event(
            task,
            "bounced",
            now,
            reason=_reason(outcome, host),
            smtp=smtp,
            bounce_class=str(outcome.category or Category.OTHER),
            attempt=attempt,
        )
        return Conclusion(event, suppress=outcome.is_hard)
    first = task["first_attempt_at"] or now
    step = next_attempt(policy, attempt, first.timestamp(), now.timestamp())
    if isinstance(step, Expire):
        return Conclusion(_expired(task, now, step.age))
    not_before = datetime.fromtimestamp(step.at, UTC)
    retry: DeliveryTask = {
        **task,
        "attempt": attempt,
        "not_before": not_before,
        "first_attempt_at": first,
    }
    event = _event(
        task,
        "deferred",
        now,
        reason=_reason(outcome, host),
        smtp=smtp,
        retry_after_ms=int((step.at - now.timestamp()) * 1000),
        attempt=attempt,
    )
    return Conclusion(event, retry=retry, final=False)


def postpone(task: DeliveryTask, until: datetime, reason: str, now: datetime) -> Conclusion:
    """Back to the queue until ``until`` without spending an attempt."""
    retry: DeliveryTask = {**task, "not_before": until}
    wait_ms = max(int((until - now).total_seconds() * 1000), 0)
    event = _event(
        task, "deferred", now, reason=reason, retry_after_ms=wait_ms, attempt=task["attempt"]
    )
    return Conclusion(event, retry=retry, final=False)


def flush_now(task: DeliveryTask) -> DeliveryTask | None:
    """The task as an operator's flush sends it: deferred mail (tried at least once) loses its
    wait; a scheduled send never tried keeps its ``send_at``, as Postfix's flush only moves
    deferred mail. None when the flush does not apply."""
    if task["attempt"] == 0:
        return None
    return {**task, "not_before": None}
