"""The per-request limits and send rules every door enforces, in one place.

The ingress refuses a body over them with a 400 (SendGrid's limits, so clients already respect
them); the gate dead-letters a request produced straight to Kafka over them, so no producer can
put 5,000 recipients or a header injection in front of everyone else's mail. The Kafka record
size is the other limit; it comes from the cluster (``streams.kafka.limits``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from streams.contract.records import EmailRequest
from streams.errors import InvalidContentError, RequestLimitError
from streams.mail.headers import (
    DISPOSITIONS,
    check_body,
    check_custom_headers,
    check_line,
    is_mime_type,
)
from streams.mail.syntax import check_syntax

__all__ = [
    "MAX_CATEGORIES",
    "MAX_CATEGORY_CHARS",
    "MAX_CUSTOM_ARGS_BYTES",
    "MAX_PERSONALIZATIONS",
    "MAX_RECIPIENTS",
    "address_problem",
    "check_request",
    "custom_args_bytes",
]

MAX_PERSONALIZATIONS: Final = 1000  # SendGrid's limits
MAX_RECIPIENTS: Final = 1000
MAX_CATEGORIES: Final = 10
MAX_CATEGORY_CHARS: Final = 255
MAX_CUSTOM_ARGS_BYTES: Final = 10_000


def custom_args_bytes(args: Mapping[str, str]) -> int:
    """Their size as SendGrid counts it: the compact JSON object."""
    return len(orjson.dumps(dict(args)))


def address_problem(email: str) -> str | None:
    """Why ``email`` cannot be a sender or recipient of a message we send, or None."""
    syntax = check_syntax(email)
    if not syntax.valid:
        return syntax.error or "not a valid address"
    if not (syntax.local_part or "").isascii():
        # the message would need SMTPUTF8 end to end, which delivery does not do
        return "a non-ASCII local part (SMTPUTF8) cannot be sent"
    return None


def check_request(request: EmailRequest) -> None:
    """Raise the first rule ``request`` breaks: RequestLimitError for a limit, a RenderError
    for a send that cannot be written as a message (a bad sender, header, text or body).
    Recipients' addresses are the gate's to judge one by one (a bad one is dropped)."""
    recipients = request["recipients"]
    if len(recipients) > MAX_RECIPIENTS:
        raise RequestLimitError(
            "limits.recipients",
            f"{len(recipients):,} recipients; at most {MAX_RECIPIENTS:,} per request",
        )
    _check_categories(request["categories"])
    _check_custom_args(request)
    if request["operation"] == "send":
        _check_message(request)


def _check_categories(categories: list[str]) -> None:
    if len(categories) > MAX_CATEGORIES:
        raise RequestLimitError(
            "limits.categories", f"{len(categories)} categories; at most {MAX_CATEGORIES}"
        )
    for i, category in enumerate(categories):
        if len(category) > MAX_CATEGORY_CHARS:
            raise RequestLimitError(
                "limits.categories", f"category {i} is over {MAX_CATEGORY_CHARS} characters"
            )
        check_line(f"categories.{i}", category)


def _check_custom_args(request: EmailRequest) -> None:
    shared = request["custom_args"]
    sizes = [custom_args_bytes(shared)]
    sizes.extend(
        custom_args_bytes({**shared, **r["custom_args"]})
        for r in request["recipients"]
        if r["custom_args"]
    )
    if max(sizes) > MAX_CUSTOM_ARGS_BYTES:
        raise RequestLimitError(
            "limits.custom_args",
            f"custom_args of {max(sizes):,} bytes; at most {MAX_CUSTOM_ARGS_BYTES:,}",
        )


def _check_mailbox(field: str, mailbox: Mapping[str, Any] | None) -> None:
    if mailbox is None:
        return
    problem = address_problem(mailbox["email"])
    if problem is not None:
        raise InvalidContentError(f"{field}.email", problem)
    if mailbox.get("name"):
        check_line(f"{field}.name", mailbox["name"])


def _check_message(request: EmailRequest) -> None:
    _check_mailbox("from", request["from"])
    _check_mailbox("reply_to", request["reply_to"])
    for i, recipient in enumerate(request["recipients"]):
        if recipient["name"]:
            check_line(f"recipients.{i}.name", recipient["name"])
    content = request["content"]
    if content is None:
        return
    if content["subject"] is not None:
        check_line("content.subject", content["subject"])
    for part, body in (("text", content["text"]), ("html", content["html"])):
        if body is not None:
            check_body(f"content.{part}", body)
    check_custom_headers(content["headers"], "content.headers")
    for i, attachment in enumerate(content["attachments"]):
        field = f"content.attachments.{i}"
        for key in ("filename", "content_type", "disposition", "content_id"):
            if (value := attachment.get(key)) is not None:
                check_line(f"{field}.{key}", str(value))
        if not is_mime_type(attachment["content_type"]):
            raise InvalidContentError(f"{field}.content_type", "not a type/subtype pair")
        if attachment["disposition"] not in DISPOSITIONS:
            raise InvalidContentError(f"{field}.disposition", "must be attachment or inline")
