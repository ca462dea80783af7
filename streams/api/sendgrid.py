"""SendGrid v3 ``/v3/mail/send`` bodies to EmailRequest records, and SendGrid-shaped errors.

Pure: no I/O, time and ids as parameters. One personalization becomes one EmailRequest (each
personalization may carry its own subject, headers and data, which our request holds once);
with a single personalization the request id is the message id, else ``<message id>.<n>``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

import orjson

from streams.api.check import Check
from streams.contract.build import email_request
from streams.contract.records import (
    Address,
    Attachment,
    Content,
    EmailRequest,
    Priority,
    Recipient,
    RecipientKind,
)
from streams.errors import IngressValidationError

__all__ = [
    "MAX_PERSONALIZATIONS",
    "MAX_RECIPIENTS",
    "translate",
]

MAX_PERSONALIZATIONS: Final = 1000  # SendGrid's limits
MAX_RECIPIENTS: Final = 1000
MAX_CATEGORIES: Final = 10
MAX_CUSTOM_ARGS_BYTES: Final = 10_000
PRIORITIES: Final = ("critical", "high", "normal", "bulk")
# set by the pipeline itself; SendGrid refuses them in `headers` too
RESERVED_HEADERS: Final = frozenset(
    {
        "bcc",
        "cc",
        "content-transfer-encoding",
        "content-type",
        "date",
        "dkim-signature",
        "from",
        "message-id",
        "mime-version",
        "received",
        "reply-to",
        "return-path",
        "subject",
        "to",
        "x-sg-eid",
        "x-sg-id",
    }
)


def _template_data(check: Check, value: Any, field: str) -> dict[str, str]:
    """dynamic_template_data may nest; our substitutions are strings, so nested values travel
    as JSON text."""
    found = check.obj(value, field) or {}
    return {str(k): v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in found.items()}


def _content(check: Check, body: dict[str, Any]) -> tuple[str | None, str | None]:
    text = html = None
    for i, raw in enumerate(check.items(body.get("content"), "content")):
        field = f"content.{i}"
        part = check.obj(raw, field) or {}
        kind = (check.text(part.get("type"), f"{field}.type") or "").lower()
        value = check.text(part.get("value"), f"{field}.value")
        if not value:
            check.fail(f"{field}.value", "The content value must be at least one character.")
        elif kind == "text/plain":
            text = value
        elif kind == "text/html":
            html = value
        else:
            check.fail(f"{field}.type", "Only text/plain and text/html are supported.")
    return text, html


def _attachments(check: Check, body: dict[str, Any]) -> list[Attachment]:
    out: list[Attachment] = []
    for i, raw in enumerate(check.items(body.get("attachments"), "attachments")):
        field = f"attachments.{i}"
        item = check.obj(raw, field) or {}
        filename = check.text(item.get("filename"), f"{field}.filename")
        encoded = check.text(item.get("content"), f"{field}.content")
        if not filename:
            check.fail(f"{field}.filename", "The attachment filename is required.")
        if not encoded:
            check.fail(f"{field}.content", "The attachment content is required.")
            continue
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            check.fail(f"{field}.content", "The attachment content must be base64 encoded.")
            continue
        out.append(
            {
                "filename": filename or "attachment",
                "content_type": check.text(item.get("type"), f"{field}.type")
                or "application/octet-stream",
                "content": content,
                "disposition": check.text(item.get("disposition"), f"{field}.disposition")
                or "attachment",
                "content_id": check.text(item.get("content_id"), f"{field}.content_id"),
            }
        )
    return out


def _headers(check: Check, value: Any, field: str) -> dict[str, str]:
    headers = check.strings(value, field)
    for name in headers:
        if name.lower() in RESERVED_HEADERS:
            check.fail(f"{field}.{name}", f"The {name} header is reserved.")
    return headers


def _recipients(check: Check, p: dict[str, Any], field: str) -> list[Recipient]:
    subs = {**check.strings(p.get("substitutions"), f"{field}.substitutions")}
    subs.update(
        _template_data(check, p.get("dynamic_template_data"), f"{field}.dynamic_template_data")
    )
    out: list[Recipient] = []
    kinds: tuple[RecipientKind, ...] = ("to", "cc", "bcc")
    for kind in kinds:
        for j, item in enumerate(check.items(p.get(kind), f"{field}.{kind}")):
            address = check.address(item, f"{field}.{kind}.{j}")
            if address is not None:
                out.append({**address, "kind": kind, "substitutions": subs, "custom_args": {}})
    if not any(r["kind"] == "to" for r in out):
        check.fail(f"{field}.to", "The to array is required for all personalization objects.")
    return out


@dataclass(frozen=True)
class _Message:
    """What every personalization of a mail/send body shares."""

    sender: Address | None
    reply_to: Address | None
    subject: str | None
    template_id: str | None
    text: str | None
    html: str | None
    attachments: list[Attachment]
    headers: dict[str, str]
    categories: list[str]
    custom_args: dict[str, str]
    send_at: datetime | None
    batch_id: str | None


@dataclass(frozen=True)
class _Caller:
    """Who sends, and what the ingress gives every request of this body."""

    tenant: str
    priority: Priority
    now: datetime


def translate(
    body: Any,
    *,
    tenant: str,
    message_id: str,
    idempotency_key: str | None,
    priority: str,
    now: datetime,
) -> list[EmailRequest]:
    """The EmailRequest records for a SendGrid v3 mail/send body. Raises
    IngressValidationError listing every problem found."""
    check = Check()
    root = check.obj(body, "body", required=True) or {}
    if priority not in PRIORITIES:
        check.fail("X-Postwire-Priority", f"priority must be one of {', '.join(PRIORITIES)}.")
    message = _message(check, root)
    personalizations = _personalizations(check, root)
    caller = _Caller(tenant, cast("Priority", priority), now)  # checked above
    single = len(personalizations) == 1
    records = [
        _personalized(
            check,
            message,
            raw,
            f"personalizations.{i}",
            caller,
            request_id=message_id if single else f"{message_id}.{i}",
            idempotency_key=None
            if idempotency_key is None
            else (idempotency_key if single else f"{idempotency_key}.{i}"),
        )
        for i, raw in enumerate(personalizations)
    ]
    if sum(len(r["recipients"]) for r in records) > MAX_RECIPIENTS:
        check.fail("personalizations", f"At most {MAX_RECIPIENTS} recipients per request.")
    if check.errors:
        raise IngressValidationError(check.errors)
    return records


def _message(check: Check, root: dict[str, Any]) -> _Message:
    """The body's top level: sender, content, attachments, headers, categories, custom args
    (checked in this order, which is the order of the problems reported)."""
    sender = check.address(root.get("from"), "from", required=True)
    reply_to = check.address(root.get("reply_to"), "reply_to")
    subject = check.text(root.get("subject"), "subject")
    template_id = check.text(root.get("template_id"), "template_id")
    text, html = _content(check, root)
    if not (text or html or template_id):
        check.fail("content", "Unless a valid template_id is provided, content is required.")
    attachments = _attachments(check, root)
    headers = _headers(check, root.get("headers"), "headers")
    categories = [str(c) for c in check.items(root.get("categories"), "categories")]
    if len(categories) > MAX_CATEGORIES:
        check.fail("categories", f"You may not have more than {MAX_CATEGORIES} categories.")
    custom_args = check.strings(root.get("custom_args"), "custom_args")
    send_at = check.send_at(root.get("send_at"), "send_at")
    batch_id = check.text(root.get("batch_id"), "batch_id")
    return _Message(
        sender,
        reply_to,
        subject,
        template_id,
        text,
        html,
        attachments,
        headers,
        categories,
        custom_args,
        send_at,
        batch_id,
    )


def _personalizations(check: Check, root: dict[str, Any]) -> list[Any]:
    personalizations = check.items(root.get("personalizations"), "personalizations")
    if not personalizations:
        check.fail("personalizations", "The personalizations field is required.")
    if len(personalizations) > MAX_PERSONALIZATIONS:
        check.fail("personalizations", f"At most {MAX_PERSONALIZATIONS} personalizations.")
    return personalizations[:MAX_PERSONALIZATIONS]


def _personalized(
    check: Check,
    message: _Message,
    raw: Any,
    field: str,
    caller: _Caller,
    *,
    request_id: str,
    idempotency_key: str | None,
) -> EmailRequest:
    """The EmailRequest of one personalization: its recipients, subject, headers and args over
    what the message shares."""
    p = check.obj(raw, field) or {}
    recipients = _recipients(check, p, field)
    subject = check.text(p.get("subject"), f"{field}.subject") or message.subject
    if not subject and not message.template_id:
        check.fail(f"{field}.subject", "The subject is required (here or at the top level).")
    args = {**message.custom_args, **check.strings(p.get("custom_args"), f"{field}.custom_args")}
    if message.batch_id:
        args["batch_id"] = message.batch_id
    if len(orjson.dumps(args)) > MAX_CUSTOM_ARGS_BYTES:
        check.fail(f"{field}.custom_args", "custom_args may not exceed 10,000 bytes.")
    content: Content = {
        "subject": subject,
        "text": message.text,
        "html": message.html,
        "template_id": message.template_id,
        "headers": {**message.headers, **_headers(check, p.get("headers"), f"{field}.headers")},
        "attachments": message.attachments,
    }
    return email_request(
        request_id,
        caller.tenant,
        "send",
        caller.now,
        idempotency_key=idempotency_key,
        priority=caller.priority,
        sender=message.sender,
        reply_to=message.reply_to,
        recipients=recipients,
        content=content,
        categories=message.categories,
        custom_args=args,
        send_at=check.send_at(p.get("send_at"), f"{field}.send_at") or message.send_at,
    )
