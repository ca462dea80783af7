"""Gate: decode, authenticate, deduplicate, rate-limit; then fan verify requests out per address.

``decide`` is the pure core for one request (state and time in, decision out);
``streams/stages/gate_stage.py`` runs it over batches on the stage runtime.

Every request leaves the gate as exactly one of: admitted (a ``processed`` event; for a verify
request, its VerifyTasks), ``dropped`` (duplicate), ``throttled`` (reject policy), deferred
(comes back after its window), or a dead letter on ``rejections`` - the books always balance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from streams.contract.build import make_event, make_suppression, rejection
from streams.contract.codec import Codec, Record
from streams.db.tenants import Directory
from streams.errors import AuthError, CodecError, InvalidContentError
from streams.gate.admission import Admit, Dedup, RateLimited, dedup_decide, rate_decide
from streams.gate.expand import Expansion, expand
from streams.kafka.records import SourcePosition
from streams.mail.syntax import split_domain

__all__ = [
    "ADMITTED",
    "STAGE",
    "Accept",
    "GateResult",
    "Reject",
    "admit",
    "decide",
    "replayed_memo",
    "track_outcome",
    "unknown_credentials",
    "verify_tasks",
]

STAGE = "gate"
# how long a throttle/defer decision is remembered for replays (admissions need no memo, see
# `replayed_memo`); memos are as rare as throttled requests, so a day costs little
MEMO_TTL = 24 * 3600.0
# what a replayed request that left no memo was: admitted (and counted) the first time
ADMITTED: dict[str, Any] = {"window": None, "retry_after": 0.0, "expires": float("inf")}


def replayed_memo(
    offset: int, watermark: int | None, memo: dict[str, Any] | None, now: float
) -> dict[str, Any] | None:
    """The decision to repeat for a record the gate has already decided, or None for a new one.

    The gate keeps, per source partition, the last offset it decided (``watermark``). A record at
    or below it is a redelivery after a crash or rebalance, or a deliberate replay: it must not be
    counted again. Throttles and deferrals left a memo; a record without one was admitted. This
    keeps state O(partitions + throttled) instead of a memo per request."""
    if watermark is None or offset > watermark:
        return None
    if memo is not None and float(memo["expires"]) > now:
        return memo
    return ADMITTED


@dataclass(frozen=True)
class Accept:
    request: Record


@dataclass(frozen=True)
class Reject:
    record: Record


def admit(
    codec: Codec, raw: bytes | None, key: bytes | None, source: SourcePosition, now: datetime
) -> Accept | Reject:
    """Decode; anything undecodable becomes a Rejection record."""
    try:
        if raw is None:
            raise CodecError("record has no value (a tombstone is not a request)")
        _, request = codec.decode(raw, expected="EmailRequest")
    except CodecError as exc:
        return Reject(rejection(source, STAGE, exc, key, raw or b"", now))
    return Accept(request)


@dataclass
class GateResult:
    outcome: str  # admitted | duplicate | throttled | deferred | rejected | undecodable
    events: list[Record] = field(default_factory=list)
    tasks: list[tuple[str, Record]] = field(default_factory=list)  # (domain, VerifyTask)
    deliveries: list[tuple[str, str, Record]] = field(default_factory=list)  # (domain, lane, task)
    suppressions: list[Record] = field(default_factory=list)
    rejection: Record | None = None
    dedup_key: str | None = None
    dedup_entry: dict[str, Any] | None = None
    count: bool = False
    defer_for: float | None = None
    memo_entry: dict[str, Any] | None = None
    forward: bool = False  # the request goes to `accepted` as it came (its audit record)


def verify_tasks(request: Record, smtp_probe: bool) -> list[tuple[str, Record]]:
    seen: set[str] = set()
    tasks = []
    for recipient in request["recipients"]:
        address = recipient["email"]
        if address in seen:
            continue
        seen.add(address)
        tasks.append(
            (
                split_domain(address),
                {
                    "request_id": request["request_id"],
                    "tenant": request["tenant"],
                    "address": address,
                    "operation": request["operation"],
                    "smtp_probe": smtp_probe and request["operation"] == "verify",
                    "priority": request["priority"],
                    "requested_at": request["created_at"],
                    "idempotency_key": request["idempotency_key"],
                    "recipient_count": len(request["recipients"]),
                    "categories": request["categories"],
                },
            )
        )
    return tasks


def decide(
    request: Record,
    directory: Directory,
    dedup_entry: dict[str, Any] | None,
    counts: dict[str, int],
    now: datetime,
    *,
    dedup_ttl: float,
    source: SourcePosition,
    raw: bytes,
    key: bytes | None,
    deferrals: int = 0,
    memo: dict[str, Any] | None = None,
) -> GateResult:
    """``memo``: the rate decision already taken for this request and attempt, when it is being
    processed again (a redelivery after a crash or rebalance). Reusing it keeps the window
    counts exact: a replayed request is neither counted twice nor throttled by its own count."""
    tenant_id = request["tenant"]
    try:
        tenant = directory.authenticate(tenant_id, request["api_key"], request["operation"])
    except AuthError as exc:
        return GateResult(
            "rejected", rejection=rejection(source, STAGE, exc, key, raw, now, tenant_id)
        )
    expansion = Expansion()
    if request["operation"] == "send":
        try:
            expansion = expand(request, now, directory.is_suppressed)
        except InvalidContentError as exc:
            return GateResult(
                "rejected", rejection=rejection(source, STAGE, exc, key, raw, now, tenant_id)
            )
    ts = now.timestamp()
    request_id = request["request_id"]
    common = {
        "request_id": request_id,
        "categories": request["categories"],
        "custom_args": request["custom_args"],
    }
    dedup_key = None
    new_entry = None
    if request["idempotency_key"]:
        dedup_key = f"{tenant_id}\x1f{request['idempotency_key']}"
        verdict, new_entry = dedup_decide(dedup_entry, request_id, ts, dedup_ttl)
        if verdict is Dedup.DUPLICATE:
            event = make_event("dropped", tenant_id, now, reason="duplicate", **common)
            return GateResult("duplicate", events=[event])
    if memo is not None:
        decision: Admit | RateLimited = (
            Admit() if memo["window"] is None else RateLimited(memo["window"], memo["retry_after"])
        )
    else:
        decision = rate_decide(counts, tenant.limits, ts)
    memo_entry = (
        {"window": decision.window, "retry_after": decision.retry_after, "expires": ts + MEMO_TTL}
        if memo is None and isinstance(decision, RateLimited)
        else None
    )
    if isinstance(decision, RateLimited):
        retry_ms = int(decision.retry_after * 1000) + 1
        reason = f"rate_limit:{decision.window}"
        if tenant.throttle_policy == "reject":
            event = make_event(
                "throttled", tenant_id, now, reason=reason, retry_after_ms=retry_ms, **common
            )
            return GateResult("throttled", events=[event], memo_entry=memo_entry)
        event = make_event(
            "deferred",
            tenant_id,
            now,
            reason=reason,
            retry_after_ms=retry_ms,
            attempt=deferrals + 1,
            **common,
        )
        # the idempotency key is taken now: the deferred request owns it when it comes back
        return GateResult(
            "deferred",
            events=[event],
            dedup_key=dedup_key,
            dedup_entry=new_entry,
            defer_for=decision.retry_after,
            memo_entry=memo_entry,
        )
    if request["operation"] in ("verify", "validate"):
        # the VerificationResult is the outcome and the VerifyTasks are the audit record: no
        # `accepted` copy and no `processed` event (two records fewer per request)
        probe = request["smtp_probe"] if request["smtp_probe"] is not None else tenant.smtp_probe
        return GateResult(
            "admitted",
            tasks=verify_tasks(request, probe),
            dedup_key=dedup_key,
            dedup_entry=new_entry,
            count=memo is None,
            memo_entry=memo_entry,
        )
    processed = make_event("processed", tenant_id, now, **common)
    tracked, suppressions = track_outcome(request, now)
    return GateResult(
        "admitted",
        events=[processed, *expansion.events, *tracked],
        suppressions=suppressions,
        deliveries=expansion.tasks,
        forward=True,
        dedup_key=dedup_key,
        dedup_entry=new_entry,
        count=memo is None,
        memo_entry=memo_entry,
    )


# a complaint or an unsubscribe means: never again (SendGrid and SES suppress on both)
SUPPRESSING = {"complained": "complaint", "unsubscribed": "unsubscribe"}


def track_outcome(request: Record, now: datetime) -> tuple[list[Record], list[Record]]:
    """A track request records its engagement event; complaints and unsubscribes also put the
    address on the tenant's suppression list."""
    track = request.get("track")
    if request["operation"] != "track" or track is None:
        return [], []
    event = make_event(
        track["event_type"],
        request["tenant"],
        track["occurred_at"],
        request_id=request["request_id"],
        message_id=track["message_id"],
        recipient=track["recipient"],
        categories=request["categories"],
        custom_args=request["custom_args"],
    )
    event["url"], event["user_agent"] = track["url"], track["user_agent"]
    reason = SUPPRESSING.get(track["event_type"])
    if reason is None:
        return [event], []
    suppression = make_suppression(
        request["tenant"],
        track["recipient"],
        reason,
        "track",
        now,
        f"message {track['message_id']}",
    )
    return [event], [suppression]


def unknown_credentials(result: GateResult) -> bool:
    """A rejection that a fresher tenant directory might turn into an admission."""
    return result.rejection is not None and result.rejection["error_code"] in (
        "auth.bad_key",
        "auth.unknown_tenant",
    )
