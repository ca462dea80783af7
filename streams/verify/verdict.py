"""Combine the sections into Reacher-style ``is_reachable``, a 0-100 score and reasons, and
decide how long the verdict may be cached (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from streams.contract.records import Reachability, VerificationResult, VerifyTask
from streams.mail.dns import MxAnswer
from streams.mail.replies import RcptOutcome, parse_enhanced
from streams.mail.syntax import SyntaxResult
from streams.verify.lists import MiscFlags
from streams.verify.probe import ProbeResult

__all__ = ["Verdict", "apply_suppression", "build_result", "cache_ttl", "judge"]

_MINUTE, _HOUR, _DAY = 60, 3600, 86400


@dataclass(frozen=True)
class Verdict:
    is_reachable: Reachability
    score: int
    reasons: tuple[str, ...]


# reasons that leave the verdict unknown: the evidence could not be had
_UNKNOWN = frozenset(
    {
        "smtp_unreachable",
        "smtp_temporary_failure",
        "smtp_blocked",
        "smtp_unknown_reply",
        "dns_unavailable",
    }
)


def judge(
    syntax: SyntaxResult,
    mx: MxAnswer | None,
    misc: MiscFlags | None,
    smtp: ProbeResult | None,
) -> Verdict:
    if not syntax.valid:
        return Verdict("invalid", 0, ("invalid_syntax",))
    assert mx is not None
    assert misc is not None
    if mx.status in _MX_INVALID:
        return Verdict("invalid", 2, (_MX_INVALID[mx.status],))
    reasons: list[str] = []
    if smtp is not None:
        found = _smtp_reasons(smtp)
        if isinstance(found, Verdict):
            return found
        reasons.extend(found)
    if mx.status in ("timeout", "error"):
        reasons.append("dns_unavailable")
    risky = _risks(misc)
    reasons.extend(risky)
    return _weigh(reasons, len(risky), probed=smtp is not None)


_MX_INVALID = {"null_mx": "null_mx", "nxdomain": "no_such_domain", "no_mail": "no_mail_server"}
# a probe's answer that settles it: the mailbox is not there
_SMTP_INVALID = {RcptOutcome.INVALID: "mailbox_unknown", RcptOutcome.DISABLED: "mailbox_disabled"}
_SMTP_REASONS = {
    RcptOutcome.FULL: "mailbox_full",
    RcptOutcome.TEMPORARY: "smtp_temporary_failure",
    RcptOutcome.BLOCKED: "smtp_blocked",
    RcptOutcome.UNKNOWN: "smtp_unknown_reply",
}


def _smtp_reasons(smtp: ProbeResult) -> list[str] | Verdict:
    """What the probe says: a verdict when it settles the address, else reasons to weigh."""
    if not smtp.can_connect:
        reasons = ["smtp_unreachable"]
    elif smtp.outcome in _SMTP_INVALID:
        return Verdict("invalid", 5, (_SMTP_INVALID[smtp.outcome],))
    else:
        reasons = [_SMTP_REASONS[smtp.outcome]] if smtp.outcome in _SMTP_REASONS else []
    if smtp.catch_all:
        reasons.append("catch_all")
    return reasons


def _risks(misc: MiscFlags) -> list[str]:
    flags = (
        (misc.is_disposable, "disposable"),
        (misc.is_role_account, "role_account"),
        (bool(misc.suggestion), "possible_typo"),
    )
    return [reason for flagged, reason in flags if flagged]


def _weigh(reasons: list[str], risks: int, *, probed: bool) -> Verdict:
    if any(r in _UNKNOWN for r in reasons):
        return Verdict("unknown", 50 - 10 * risks, tuple(reasons))
    if risks or "mailbox_full" in reasons or "catch_all" in reasons:
        penalty = 15 * risks + (20 if "mailbox_full" in reasons else 0)
        penalty += 15 if "catch_all" in reasons else 0
        return Verdict("risky", max(10, 75 - penalty), tuple(reasons))
    # without a probe MX is the best evidence we have: safe, but not as sure as a 250
    score = 99 if probed else 85
    return Verdict("safe", score, tuple(reasons))


def cache_ttl(verdict: Verdict, probed: bool) -> int:
    """Seconds a verdict may be reused: long when confident, short when we did not learn much."""
    if verdict.is_reachable == "unknown":
        return 10 * _MINUTE
    if verdict.reasons == ("invalid_syntax",):
        return 30 * _DAY  # syntax never changes
    if verdict.is_reachable == "invalid":
        return _DAY
    if verdict.is_reachable == "safe" and probed:
        return 7 * _DAY
    return 12 * _HOUR


def build_result(
    task: VerifyTask,
    syntax: SyntaxResult,
    mx: MxAnswer | None,
    misc: MiscFlags | None,
    smtp: ProbeResult | None,
    verdict: Verdict,
    now: datetime,
) -> VerificationResult:
    """The VerificationResult record (schemas/VerificationResult.avsc)."""
    return {
        "request_id": task["request_id"],
        "tenant": task["tenant"],
        "address": task["address"],
        "normalized": syntax.normalized,
        "is_reachable": verdict.is_reachable,
        "score": verdict.score,
        "reasons": list(verdict.reasons),
        "syntax": {
            "is_valid_syntax": syntax.valid,
            "username": syntax.local_part,
            "domain": syntax.domain,
            "ascii_domain": syntax.ascii_domain,
            "suggestion": None
            if misc is None or misc.suggestion is None
            else f"{syntax.local_part}@{misc.suggestion}",
            "error": syntax.error,
        },
        "mx": {
            "accepts_mail": None if mx is None else mx.accepts_mail,
            "records": [] if mx is None else list(mx.hosts),
            "null_mx": mx is not None and mx.status == "null_mx",
            "implicit_mx": mx is not None and mx.status == "implicit",
            "error": None if mx is None else mx.error,
        },
        "misc": {
            "is_disposable": bool(misc and misc.is_disposable),
            "is_role_account": bool(misc and misc.is_role_account),
            "is_free_provider": bool(misc and misc.is_free_provider),
            "is_suppressed": False,
        },
        "smtp": None
        if smtp is None
        else {
            "can_connect_smtp": smtp.can_connect,
            "is_deliverable": None
            if not smtp.can_connect
            else smtp.outcome is RcptOutcome.DELIVERABLE,
            "is_catch_all": smtp.catch_all,
            "has_full_inbox": smtp.outcome is RcptOutcome.FULL,
            "is_disabled": smtp.outcome is RcptOutcome.DISABLED,
            "reply": None
            if not smtp.code
            else {
                "code": smtp.code,
                "enhanced_code": parse_enhanced(smtp.message),
                "message": smtp.message,
            },
        },
        "cached": False,
        "requested_at": task.get("requested_at"),
        "verified_at": now,
    }


def apply_suppression(result: VerificationResult) -> VerificationResult:
    """The tenant suppressed this address: never better than risky, and say why. Kept out of the
    cached verdict because suppression is per tenant while the cache is per address."""
    result = {**result, "misc": {**result["misc"], "is_suppressed": True}}  # a copy, not an edit
    result["reasons"] = [*result["reasons"], "suppressed"]
    if result["is_reachable"] == "safe":
        result["is_reachable"] = "risky"
    result["score"] = max(0, min(result["score"], 60) - 15)
    return result
