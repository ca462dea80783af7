"""The one set of header, text and per-request rules every door applies (streams/mail)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streams.contract.build import email_request, recipient
from streams.contract.records import EmailRequest
from streams.errors import (
    BareLineEndingError,
    ControlCharacterError,
    HeaderInjectionError,
    InvalidContentError,
    RequestLimitError,
)
from streams.mail.headers import (
    SIGNED_HEADERS,
    check_body,
    check_custom_headers,
    check_line,
    is_reserved,
)
from streams.mail.limits import MAX_RECIPIENTS, address_problem, check_request

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def test_dkim_over_signs_only_what_the_pipeline_writes_or_rfc_8058_asks() -> None:
    unsubscribe = {"list-unsubscribe", "list-unsubscribe-post"}
    assert "from" in SIGNED_HEADERS
    for name in SIGNED_HEADERS:
        assert is_reserved(name) != (name in unsubscribe), name


@pytest.mark.parametrize(
    "name", ["From", "SENDER", "Content-Disposition", "ARC-Seal", "Resent-To", "X-Postwire-X"]
)
def test_reserved_names_in_any_case(name: str) -> None:
    assert is_reserved(name)


@pytest.mark.parametrize("name", ["List-Unsubscribe", "X-Campaign", "In-Reply-To", "References"])
def test_names_a_sender_may_set(name: str) -> None:
    assert not is_reserved(name)
    check_custom_headers({name: "<https://acme.example/u/1>"}, "content.headers")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("a\r\nBcc: x@evil.example", HeaderInjectionError),
        ("a\nb", HeaderInjectionError),
        ("nul\x00", ControlCharacterError),
        ("esc\x1b[0m", ControlCharacterError),
        ("c1\x9b", ControlCharacterError),
    ],
)
def test_one_line_texts(value: str, error: type[Exception]) -> None:
    with pytest.raises(error, match="subject"):
        check_line("subject", value)


def test_tabs_and_non_ascii_are_text() -> None:
    check_line("subject", "Grüße\tand 日本")


@pytest.mark.parametrize("value", ["lf\nonly\n", "crlf\r\n", "mixed\r\nand\n", "\x1b[0m ok"])
def test_bodies_may_use_lf(value: str) -> None:
    check_body("content.text", value)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("bare\rcr", BareLineEndingError),
        ("ends\r", BareLineEndingError),
        ("nul\x00", ControlCharacterError),
    ],
)
def test_bodies_refuse_bare_cr_and_nul(value: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"content\.text"):
        check_body("content.text", value)


def send(**fields: Any) -> EmailRequest:
    base: dict[str, Any] = {
        "sender": {"email": "news@acme.example", "name": "Acme"},
        "recipients": [recipient("bob@example.com", "Bob")],
        "content": {
            "subject": "Hi",
            "text": "Hello\n",
            "html": None,
            "template_id": None,
            "headers": {},
            "attachments": [],
        },
    }
    base.update(fields)
    return email_request("r1", "acme", "send", NOW, **base)


def content(**changes: Any) -> dict[str, Any]:
    body = dict(send()["content"] or {})
    body.update(changes)
    return body


def test_a_plain_send_passes() -> None:
    check_request(send())


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (
            send(recipients=[recipient(f"u{i}@x.example") for i in range(MAX_RECIPIENTS + 1)]),
            "limits.recipients",
        ),
        (send(categories=[str(i) for i in range(11)]), "limits.categories"),
        (send(categories=["x" * 256]), "limits.categories"),
        (send(custom_args={"k": "v" * 10_000}), "limits.custom_args"),
    ],
)
def test_limits(request_: EmailRequest, code: str) -> None:
    with pytest.raises(RequestLimitError) as raised:
        check_request(request_)
    assert raised.value.code == code


def test_recipient_limit_holds_for_verify_requests_too() -> None:
    many = [recipient(f"u{i}@x.example") for i in range(MAX_RECIPIENTS + 1)]
    with pytest.raises(RequestLimitError):
        check_request(email_request("r1", "acme", "verify", NOW, recipients=many))


def test_a_recipients_own_custom_args_count_with_the_shared_ones() -> None:
    rcpt = recipient("bob@example.com") | {"custom_args": {"b": "y" * 6000}}
    with pytest.raises(RequestLimitError, match="custom_args"):
        check_request(send(custom_args={"a": "x" * 6000}, recipients=[rcpt]))


@pytest.mark.parametrize(
    ("request_", "error", "field"),
    [
        (send(sender={"email": "not-an-address", "name": None}), InvalidContentError, "from.email"),
        (
            send(sender={"email": "jörg@acme.example", "name": None}),
            InvalidContentError,
            "from.email",
        ),
        (
            send(sender={"email": "a@acme.example", "name": "A\r\nBcc: x"}),
            HeaderInjectionError,
            "from.name",
        ),
        (send(reply_to={"email": "nope", "name": None}), InvalidContentError, "reply_to.email"),
        (
            send(recipients=[recipient("b@example.com", "B\x00")]),
            ControlCharacterError,
            "recipients.0.name",
        ),
        (send(content=content(subject="Hi\nBcc: x")), HeaderInjectionError, "content.subject"),
        (send(content=content(text="a\rb")), BareLineEndingError, "content.text"),
        (send(content=content(html="a\x00")), ControlCharacterError, "content.html"),
        (
            send(content=content(headers={"Return-Path": "<x@y>"})),
            InvalidContentError,
            "Return-Path",
        ),
        (send(content=content(headers={"X-A": "a\r\nb"})), HeaderInjectionError, "X-A"),
        (send(categories=["a\nb"]), HeaderInjectionError, "categories.0"),
        (
            send(
                content=content(
                    attachments=[
                        {
                            "filename": "a\r\n.txt",
                            "content_type": "text/plain",
                            "content": b"",
                            "disposition": "attachment",
                            "content_id": None,
                        }
                    ]
                )
            ),
            HeaderInjectionError,
            "attachments.0.filename",
        ),
        (
            send(
                content=content(
                    attachments=[
                        {
                            "filename": "a",
                            "content_type": "text",
                            "content": b"",
                            "disposition": "attachment",
                            "content_id": None,
                        }
                    ]
                )
            ),
            InvalidContentError,
            "content_type",
        ),
    ],
)
def test_send_rules(request_: EmailRequest, error: type[Exception], field: str) -> None:
    with pytest.raises(error, match=field):
        check_request(request_)


def test_address_problems() -> None:
    assert address_problem("bob@example.com") is None
    assert address_problem("bob@bücher.example") is None  # IDN domains are written as IDNA
    assert "SMTPUTF8" in (address_problem("jörg@example.com") or "")
    assert address_problem("bob@") is not None
