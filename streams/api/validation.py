"""SendGrid's Email Address Validation API shapes (pure): ``POST /v3/validations/email``'s body
in, and a pipeline VerificationResult (as the verifications table holds it) out as SendGrid's
``{"result": {...}}``."""

from __future__ import annotations

from typing import Any, Final

from streams.api.check import Check

__all__ = ["VERDICTS", "parse_validation", "sendgrid_validation"]

Json = dict[str, Any]

# SendGrid has three verdicts; an address the pipeline could not decide is a risk to send to
VERDICTS: Final = {"safe": "Valid", "risky": "Risky", "invalid": "Invalid", "unknown": "Risky"}
MAX_SOURCE: Final = 100


def parse_validation(body: Any) -> tuple[Any, str | None]:
    """(email as given, source) of ``{"email", "source"?}``; the email is checked by the
    verify path's own parser."""
    check = Check()
    root = check.obj(body, "body", required=True) or {}
    source = check.text(root.get("source"), "source")
    if source is not None and len(source) > MAX_SOURCE:
        check.fail("source", f"The source may have at most {MAX_SOURCE} characters.")
    check.done()
    return root.get("email"), source


def sendgrid_validation(result: Json, *, source: str | None, ip_address: str | None) -> Json:
    """SendGrid's answer for one verified address."""
    syntax = result.get("syntax") or {}
    mx = result.get("mx") or {}
    misc = result.get("misc") or {}
    email = result.get("email") or result.get("normalized") or ""
    local, _, host = str(email).rpartition("@")
    out: Json = {
        "email": email,
        "verdict": VERDICTS.get(str(result.get("is_reachable")), "Risky"),
        "score": round(int(result.get("score") or 0) / 100, 5),
        "local": syntax.get("username") or local,
        "host": syntax.get("domain") or host,
        "checks": {
            "domain": {
                "has_valid_address_syntax": bool(syntax.get("is_valid_syntax")),
                "has_mx_or_a_record": mx.get("accepts_mail") is True,
                "is_suspected_disposable_address": bool(misc.get("is_disposable")),
            },
            "local_part": {"is_suspected_role_address": bool(misc.get("is_role_account"))},
            "additional": {
                "has_known_bounces": bool(misc.get("is_suppressed")),
                "has_suspected_bounces": result.get("is_reachable") == "invalid"
                and bool(syntax.get("is_valid_syntax")),
            },
        },
        "ip_address": ip_address,
    }
    if syntax.get("suggestion"):
        out["suggestion"] = syntax["suggestion"]
    if source is not None:
        out["source"] = source
    return {"result": out}
