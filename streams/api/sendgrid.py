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
    Tracking,
)
from streams.mail.headers import (
    DISPOSITIONS,
    check_body,
    check_custom_headers,
    check_header_name,
    check_line,
    is_mime_type,
)
from streams.mail.limits import (
    MAX_CATEGORIES,
    MAX_CATEGORY_CHARS,
    MAX_CUSTOM_ARGS_BYTES,
    MAX_PERSONALIZATIONS,
    MAX_RECIPIENTS,
    check_request,
    custom_args_bytes,
)
from streams.mail.unsubscribe import MAX_GROUP

__all__ = [
    "MAX_PERSONALIZATIONS",
    "MAX_RECIPIENTS",
    "translate",
]

PRIORITIES: Final = ("critical", "high", "normal", "bulk")
MAX_GROUPS_TO_DISPLAY: Final = 25  # SendGrid's bound
# SendGrid's settings objects: `enable` is all of each that is read; sandbox_mode, open_tracking
# and click_tracking act
MAIL_SETTINGS: Final = (
    "bypass_list_management",
    "bypass_spam_management",
    "bypass_bounce_management",
    "bypass_unsubscribe_management",
    "footer",
    "sandbox_mode",
)
TRACKING_SETTINGS: Final = (
    "click_tracking",
    "open_tracking",
    "subscription_tracking",
    "ganalytics",
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
            continue
        check.rule(check_body, f"{field}.value", value)
        if kind == "text/plain":
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
        kind = check.text(item.get("type"), f"{field}.type") or "application/octet-stream"
        if not is_mime_type(kind):
            check.fail(f"{field}.type", "The attachment type must be a MIME type (type/subtype).")
        disposition = check.text(item.get("disposition"), f"{field}.disposition") or "attachment"
        if disposition not in DISPOSITIONS:
            check.fail(f"{field}.disposition", "The disposition must be attachment or inline.")
        content_id = check.text(item.get("content_id"), f"{field}.content_id")
        for key, text in (("filename", filename), ("content_id", content_id)):
            if text is not None:
                check.rule(check_line, f"{field}.{key}", text)
        out.append(
            {
                "filename": filename or "attachment",
                "content_type": kind,
                "content": content,
                "disposition": disposition,
                "content_id": content_id,
            }
        )
    return out


def _headers(check: Check, value: Any, field: str) -> dict[str, str]:
    headers = check.strings(value, field)
    for name, text in headers.items():
        if check.rule(check_header_name, f"{field}.{name}", name):
            check.rule(check_line, f"{field}.{name}", text)
    return headers


def _merged(check: Check, message: _Message, value: Any, field: str) -> dict[str, str]:
    """A personalization's headers over the message's, a name in any case replacing the
    other; then the rules over the whole set (a name twice, the one-click pair)."""
    before = len(check.errors)
    own = _headers(check, value, field)
    names = {name.lower() for name in own}
    shared = message.headers
    merged = {name: text for name, text in shared.items() if name.lower() not in names} | own
    if message.headers_ok and len(check.errors) == before:
        check.rule(check_custom_headers, merged, field)
    return merged


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
    to = p.get("to")
    if not (isinstance(to, list) and to):  # invalid addresses in it are problems of their own
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
    headers_ok: bool  # each header passed its own checks (the set is checked per personalization)
    categories: list[str]
    custom_args: dict[str, str]
    send_at: datetime | None
    batch_id: str | None
    sandbox: bool
    tracking: Tracking | None = None
    asm_group_id: int | None = None


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
    if not check.errors:
        # the gate's own rules, so what is answered 202 here is never dead-lettered there
        for i, record in enumerate(records):
            check.rule(check_request, record, at=f"personalizations.{i}")
    check.done()
    return records


def _message(check: Check, root: dict[str, Any]) -> _Message:
    """The body's top level: sender, content, attachments, headers, categories, custom args
    (checked in this order, which is the order of the problems reported)."""
    sender = check.address(root.get("from"), "from", required=True)
    reply_to = check.address(root.get("reply_to"), "reply_to")
    subject = check.text(root.get("subject"), "subject")
    if subject is not None:
        check.rule(check_line, "subject", subject)
    template_id = check.text(root.get("template_id"), "template_id")
    text, html = _content(check, root)
    if not (text or html or template_id):
        check.fail("content", "Unless a valid template_id is provided, content is required.")
    attachments = _attachments(check, root)
    before = len(check.errors)
    headers = _headers(check, root.get("headers"), "headers")
    headers_ok = len(check.errors) == before
    categories = _categories(check, root.get("categories"))
    custom_args = check.strings(root.get("custom_args"), "custom_args")
    send_at = check.send_at(root.get("send_at"), "send_at")
    batch_id = check.text(root.get("batch_id"), "batch_id")
    sandbox = _sandbox(check, root)
    return _Message(
        sender,
        reply_to,
        subject,
        template_id,
        text,
        html,
        attachments,
        headers,
        headers_ok,
        categories,
        custom_args,
        send_at,
        batch_id,
        sandbox,
        tracking=_tracking(root),
        asm_group_id=_asm(check, root.get("asm")),
    )


def _group_id(check: Check, value: Any, field: str) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_GROUP:
        check.fail(field, f"The group_id must be an integer from 1 to {MAX_GROUP}.")
        return None
    return value


def _asm(check: Check, value: Any) -> int | None:
    """The suppression group of ``asm`` (``{"group_id", "groups_to_display"?}``). Whether the
    tenant has the group is the route's check (it needs the directory); groups_to_display is
    checked and has no effect: postwire's unsubscribe page offers the mail's own group only."""
    asm = check.obj(value, "asm")
    if asm is None:
        return None
    if "group_id" not in asm:
        check.fail("asm.group_id", "The asm.group_id parameter is required with asm.")
        return None
    group = _group_id(check, asm["group_id"], "asm.group_id")
    shown = check.items(asm.get("groups_to_display"), "asm.groups_to_display")
    if len(shown) > MAX_GROUPS_TO_DISPLAY:
        check.fail(
            "asm.groups_to_display", f"At most {MAX_GROUPS_TO_DISPLAY} groups may be displayed."
        )
    for i, shown_id in enumerate(shown[:MAX_GROUPS_TO_DISPLAY]):
        _group_id(check, shown_id, f"asm.groups_to_display.{i}")
    return group


def _categories(check: Check, value: Any) -> list[str]:
    categories = [str(c) for c in check.items(value, "categories")]
    if len(categories) > MAX_CATEGORIES:
        check.fail("categories", f"You may not have more than {MAX_CATEGORIES} categories.")
    for i, category in enumerate(categories):
        if len(category) > MAX_CATEGORY_CHARS:
            check.fail(f"categories.{i}", f"A category may have {MAX_CATEGORY_CHARS} characters.")
        check.rule(check_line, f"categories.{i}", category)
    return categories


def _sandbox(check: Check, root: dict[str, Any]) -> bool:
    """mail_settings and tracking_settings: their shape is checked, sandbox_mode acts (open and
    click tracking too, read by ``_tracking``), the others are read and have no effect (see the
    README)."""
    enabled = {}
    for group, names in (
        ("mail_settings", MAIL_SETTINGS),
        ("tracking_settings", TRACKING_SETTINGS),
    ):
        settings = check.obj(root.get(group), group) or {}
        for name in names:
            field = f"{group}.{name}"
            setting = check.obj(settings.get(name), field) or {}
            enable = setting.get("enable")
            if enable is not None and not isinstance(enable, bool):
                check.fail(f"{field}.enable", "The enable parameter must be a boolean.")
            enabled[name] = enable is True
    return enabled["sandbox_mode"]


def _enabled(root: dict[str, Any], name: str, key: str = "enable") -> bool:
    settings = root.get("tracking_settings")
    setting = settings.get(name) if isinstance(settings, dict) else None
    return isinstance(setting, dict) and setting.get(key) is True


def _tracking(root: dict[str, Any]) -> Tracking | None:
    """Open and click tracking as tracking_settings ask (their shape is checked by
    ``_sandbox``); None when neither is on."""
    opens = _enabled(root, "open_tracking")
    clicks = _enabled(root, "click_tracking")
    if not (opens or clicks):
        return None
    click_text = clicks and _enabled(root, "click_tracking", "enable_text")
    return {"open": opens, "click": clicks, "click_text": click_text}


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
    own_subject = check.text(p.get("subject"), f"{field}.subject")
    if own_subject is not None:
        check.rule(check_line, f"{field}.subject", own_subject)
    subject = own_subject or message.subject
    if not subject and not message.template_id:
        check.fail(f"{field}.subject", "The subject is required (here or at the top level).")
    args = {**message.custom_args, **check.strings(p.get("custom_args"), f"{field}.custom_args")}
    if message.batch_id:
        args["batch_id"] = message.batch_id
    if custom_args_bytes(args) > MAX_CUSTOM_ARGS_BYTES:
        check.fail(f"{field}.custom_args", "custom_args may not exceed 10,000 bytes.")
    content: Content = {
        "subject": subject,
        "text": message.text,
        "html": message.html,
        "template_id": message.template_id,
        "headers": _merged(check, message, p.get("headers"), f"{field}.headers"),
        "attachments": message.attachments,
        "tracking": message.tracking,
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
        sandbox=message.sandbox,
        asm_group_id=message.asm_group_id,
    )
