"""tracking_settings onto the request, and SendGrid's validation answer."""

from __future__ import annotations

from typing import Any

from streams.api.validation import parse_validation, sendgrid_validation
from streams.contract.codec import default_codec
from tests.unit.test_sendgrid import body, problems, run


def test_tracking_settings_reach_the_request_content() -> None:
    settings = {
        "open_tracking": {"enable": True},
        "click_tracking": {"enable": True, "enable_text": True},
    }
    [request] = run(body(tracking_settings=settings))
    assert request["content"]["tracking"] == {"open": True, "click": True, "click_text": True}
    default_codec().encode("EmailRequest", request)  # fits the schema
    [plain] = run(body())
    assert plain["content"]["tracking"] is None
    [opens] = run(body(tracking_settings={"open_tracking": {"enable": True}}))
    assert opens["content"]["tracking"] == {"open": True, "click": False, "click_text": False}
    bad = problems(body(tracking_settings={"click_tracking": {"enable": "yes"}}))
    assert "tracking_settings.click_tracking.enable" in bad


RESULT: dict[str, Any] = {
    "email": "Ann@Example.com",
    "is_reachable": "safe",
    "score": 87,
    "syntax": {"is_valid_syntax": True, "username": "Ann", "domain": "example.com"},
    "mx": {"accepts_mail": True},
    "misc": {"is_disposable": False, "is_role_account": True, "is_suppressed": False},
}


def test_validation_answer_has_sendgrids_shape() -> None:
    out = sendgrid_validation(RESULT, source="signup", ip_address="127.0.0.1")["result"]
    assert out["verdict"] == "Valid"
    assert out["score"] == 0.87
    assert (out["local"], out["host"], out["source"]) == ("Ann", "example.com", "signup")
    assert out["checks"]["domain"]["has_mx_or_a_record"] is True
    assert out["checks"]["local_part"]["is_suspected_role_address"] is True
    assert out["ip_address"] == "127.0.0.1"
    for reachable, verdict in (("risky", "Risky"), ("invalid", "Invalid"), ("unknown", "Risky")):
        changed = {**RESULT, "is_reachable": reachable}
        assert sendgrid_validation(changed, source=None, ip_address=None)["result"]["verdict"] == (
            verdict
        )


def test_validation_body() -> None:
    assert parse_validation({"email": "a@b.example", "source": "x"}) == ("a@b.example", "x")
    assert parse_validation({"email": "a@b.example"}) == ("a@b.example", None)
