"""Gate: decode, authenticate, deduplicate, rate-limit; then fan verify requests out per address.

``decide`` is the pure core for one request (state and time in, decision out);
``streams/stages/gate_stage.py`` runs it over batches on the stage runtime.

Every request leaves the gate as exactly one of: admitted (a ``processed`` event; for a verify
request, its VerifyTasks), ``dropped`` (duplicate), ``throttled`` (reject policy), deferred
(comes back after its window), or a dead letter on ``rejections`` - the books always balance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from streams.contract.build import RequestDetails, make_event, make_suppression, rejection
from streams.contract.codec import Codec
from streams.contract.records import (
    DeliveryEvent,
    DeliveryTask,
    EmailRequest,
    Rejection,
    Suppression,
    VerifyTask,
)
from streams.db.tenants import Directory, Limits, Tenant
from streams.errors import (
    AuthError,
    CodecError,
    PostwireError,
    RecordTooLargeError,
    RenderError,
    RequestLimitError,
    TrackRefusedError,
)
from streams.gate.admission import (
    Admit,
    Dedup,
    DedupEntry,
    Memo,
    RateLimited,
    dedup_decide,
    rate_decide,
)
from streams.gate.expand import Expansion, expand
from streams.gate.trust import Trust
from streams.kafka.limits import DEFAULT_LIMIT, RecordLimit
from streams.kafka.records import SourcePosition
from streams.mail.limits import check_request
from streams.mail.syntax import split_domain

__all__ = [
    "ADMITTED",
    "STAGE",
    "Accept",
    "Arrival",
    "GateResult",
    "Reject",
    "Seen",
    "admit",
    "decide",
    "replayed_memo",
    "track_outcome",
    "unknown_credentials",
    "unknown_sender",
    "verify_tasks",
]

STAGE = "gate"
# how long a throttle/defer decision is remembered for replays (admissions need no memo, see
# `replayed_memo`); memos are as rare as throttled requests, so a day costs little
MEMO_TTL = 24 * 3600.0
# how much of a record too large to carry its dead letter keeps
RAW_PREFIX = 64 * 1024
# what a replayed request that left no memo was: admitted (and counted) the first time
ADMITTED: Memo = {"window": None, "retry_after": 0.0, "expires": float("inf")}


def replayed_memo(offset: int, watermark: int | None, memo: Memo | None, now: float) -> Memo | None:
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
    request: EmailRequest


@dataclass(frozen=True)
class Reject:
    record: Rejection


def admit(
    codec: Codec,
    raw: bytes | None,
    key: bytes | None,
    source: SourcePosition,
    now: datetime,
    limit: RecordLimit = DEFAULT_LIMIT,
) -> Accept | Reject:
    """Measure and decode; a record too large for what the gate would make of it, or one that
    does not decode, becomes a Rejection record."""
    try:
        limit.check(key, raw)
    except RecordTooLargeError as exc:
        # only a prefix: the whole record would not fit the dead-letter topic either
        prefix = (raw or b"")[: min(RAW_PREFIX, limit.request_bytes)]
        return Reject(rejection(source, STAGE, exc, key, prefix, now))
    try:
        if raw is None:
            raise CodecError("record has no value (a tombstone is not a request)")
        request = codec.decode_as(raw, "EmailRequest")
    except CodecError as exc:
        return Reject(rejection(source, STAGE, exc, key, raw or b"", now))
    return Accept(request)


@dataclass
class GateResult:
    outcome: str  # admitted | duplicate | throttled | deferred | rejected | undecodable
    events: list[DeliveryEvent] = field(default_factory=list)
    tasks: list[tuple[str, VerifyTask]] = field(default_factory=list)  # (domain, task)
    # (domain, lane, task)
    deliveries: list[tuple[str, str, DeliveryTask]] = field(default_factory=list)
    suppressions: list[Suppression] = field(default_factory=list)
    rejection: Rejection | None = None
    dedup_key: str | None = None
    dedup_entry: DedupEntry | None = None
    count: bool = False
    defer_for: float | None = None
    memo_entry: Memo | None = None
    forward: bool = False  # the request goes to `accepted` as it came (its audit record)


def verify_tasks(request: EmailRequest, smtp_probe: bool) -> list[tuple[str, VerifyTask]]:
    seen: set[str] = set()
    tasks: list[tuple[str, VerifyTask]] = []
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
                    "operation": "verify" if request["operation"] == "verify" else "validate",
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


@dataclass(frozen=True)
class Arrival:
    """Where a request came from: its place in the source topic, its bytes, key and headers
    (what its signature covers), and how often it has come back deferred. ``kept``: what a dead
    letter keeps instead of ``raw``, when that differs (an old-schema record re-encoded without
    the fields it may no longer carry)."""

    source: SourcePosition
    raw: bytes
    key: bytes | None
    deferrals: int = 0
    headers: Sequence[tuple[str, bytes]] = ()
    kept: bytes | None = None

    def rejected(self, error: PostwireError, now: datetime, tenant: str) -> GateResult:
        raw = self.raw if self.kept is None else self.kept
        return GateResult(
            "rejected", rejection=rejection(self.source, STAGE, error, self.key, raw, now, tenant)
        )


@dataclass(frozen=True)
class Seen:
    """What the gate's state already holds for a request: the entry under its idempotency key,
    the tenant's window counts, and, for a request being processed again, the rate decision
    taken the first time (reusing it keeps the counts exact: a replayed request is neither
    counted twice nor throttled by its own count)."""

    dedup_entry: DedupEntry | None
    counts: dict[str, int]
    memo: Memo | None = None


def decide(
    request: EmailRequest,
    directory: Directory,
    seen: Seen,
    arrival: Arrival,
    now: datetime,
    *,
    trust: Trust,
    dedup_ttl: float,
) -> GateResult:
    """Authenticate, check the limits and the send policy, deduplicate, rate-limit; one request,
    pure."""
    tenant_id = request["tenant"]
    try:
        tenant, signed = trust.authenticate(
            directory, request, arrival.headers, arrival.key, arrival.raw
        )
        trust.check_track(request, signed, now)
        check_request(request)
        expansion = _expansion(request, now, directory)
    except (AuthError, RequestLimitError, RenderError, TrackRefusedError) as exc:
        return arrival.rejected(exc, now, tenant_id)
    ts = now.timestamp()
    details: RequestDetails = {
        "request_id": request["request_id"],
        "categories": request["categories"],
        "custom_args": request["custom_args"],
        "asm_group_id": request.get("asm_group_id"),
    }
    dedup_key, verdict, new_entry = _dedup(request, seen.dedup_entry, ts, dedup_ttl)
    if verdict is Dedup.DUPLICATE:
        event = make_event("dropped", tenant_id, now, reason="duplicate", **details)
        return GateResult("duplicate", events=[event])
    decision = _rate(seen, tenant.limits, ts)
    memo_entry = _memo_entry(decision, seen.memo, ts)
    if isinstance(decision, RateLimited):
        result = _limited(decision, tenant, arrival.deferrals, now, details)
        if result.outcome == "deferred":
            # the idempotency key is taken now: the deferred request owns it when it comes back
            result.dedup_key, result.dedup_entry = dedup_key, new_entry
        result.memo_entry = memo_entry
        return result
    result = _admitted(request, tenant, expansion, now, details)
    result.dedup_key, result.dedup_entry = dedup_key, new_entry
    result.count, result.memo_entry = seen.memo is None, memo_entry
    return result


NOT_VERIFIED = "auth.sender_not_verified"


def _expansion(request: EmailRequest, now: datetime, directory: Directory) -> Expansion:
    """A send request's tasks and drop events; raises InvalidContentError for a bad one and
    AuthError when its From is not a verified sender identity of its tenant."""
    if request["operation"] != "send":
        return Expansion()
    expansion = expand(request, now, directory.suppression)
    sender = request["from"]
    # expand refused a request without a valid From; a direct producer skips the ingress's 403
    if sender is not None and not directory.verified_sender(request["tenant"], sender["email"]):
        raise AuthError(
            NOT_VERIFIED,
            f"from {sender['email']!r} is not a verified sender identity of tenant"
            f" {request['tenant']!r}",
        )
    return expansion


def _dedup(
    request: EmailRequest, entry: DedupEntry | None, ts: float, ttl: float
) -> tuple[str | None, Dedup, DedupEntry | None]:
    """For a request with an idempotency key: its dedup key, whether it is new, a replay or a
    duplicate, and the entry to store for a new one."""
    if not request["idempotency_key"]:
        return None, Dedup.NEW, None
    key = f"{request['tenant']}\x1f{request['idempotency_key']}"
    verdict, new_entry = dedup_decide(entry, request["request_id"], ts, ttl)
    return key, verdict, new_entry


def _rate(seen: Seen, limits: Limits, ts: float) -> Admit | RateLimited:
    memo = seen.memo
    if memo is None:
        return rate_decide(seen.counts, limits, ts)
    return Admit() if memo["window"] is None else RateLimited(memo["window"], memo["retry_after"])


def _memo_entry(decision: Admit | RateLimited, memo: Memo | None, ts: float) -> Memo | None:
    """A first-time throttle or deferral is remembered, so a replay repeats it."""
    if memo is not None or not isinstance(decision, RateLimited):
        return None
    return {
        "window": decision.window,
        "retry_after": decision.retry_after,
        "expires": ts + MEMO_TTL,
    }


def _limited(
    decision: RateLimited, tenant: Tenant, deferrals: int, now: datetime, details: RequestDetails
) -> GateResult:
    """Over a limit: answered ``throttled`` (reject policy) or deferred to the window's end."""
    retry_ms = int(decision.retry_after * 1000) + 1
    reason = f"rate_limit:{decision.window}"
    if tenant.throttle_policy == "reject":
        event = make_event(
            "throttled", tenant.tenant_id, now, reason=reason, retry_after_ms=retry_ms, **details
        )
        return GateResult("throttled", events=[event])
    event = make_event(
        "deferred",
        tenant.tenant_id,
        now,
        reason=reason,
        retry_after_ms=retry_ms,
        attempt=deferrals + 1,
        **details,
    )
    return GateResult("deferred", events=[event], defer_for=decision.retry_after)


def _admitted(
    request: EmailRequest,
    tenant: Tenant,
    expansion: Expansion,
    now: datetime,
    details: RequestDetails,
) -> GateResult:
    if request["operation"] in ("verify", "validate"):
        # the VerificationResult is the outcome and the VerifyTasks are the audit record: no
        # `accepted` copy and no `processed` event (two records fewer per request)
        probe = request["smtp_probe"] if request["smtp_probe"] is not None else tenant.smtp_probe
        return GateResult("admitted", tasks=verify_tasks(request, probe))
    processed = make_event("processed", tenant.tenant_id, now, **details)
    tracked, suppressions = track_outcome(request, now)
    return GateResult(
        "admitted",
        events=[processed, *expansion.events, *tracked],
        suppressions=suppressions,
        deliveries=expansion.tasks,
        forward=True,
    )


# a complaint or an unsubscribe means: never again (SendGrid and SES suppress on both)
SUPPRESSING = {"complained": "complaint", "unsubscribed": "unsubscribe"}


def track_outcome(
    request: EmailRequest, now: datetime
) -> tuple[list[DeliveryEvent], list[Suppression]]:
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
        url=track["url"],
        user_agent=track["user_agent"],
        reason=track.get("reason"),
        ip=track["ip"],
        asm_group_id=request.get("asm_group_id"),
    )
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


def unknown_sender(result: GateResult) -> bool:
    """A rejection that a sender identity verified since the last refresh would undo."""
    return result.rejection is not None and result.rejection["error_code"] == NOT_VERIFIED


def unknown_credentials(result: GateResult) -> bool:
    """A rejection that a fresher tenant directory might turn into an admission."""
    return result.rejection is not None and result.rejection["error_code"] in (
        "auth.unknown_key",
        "auth.unknown_tenant",
    )
