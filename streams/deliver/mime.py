"""Render a send request into RFC 5322 messages, one per recipient (pure).

``prepare(task)`` does once what every recipient of a request shares: it checks the sender,
custom headers and attachments, compiles the templates in a sandbox and serialises everything
that does not depend on the recipient. When the bodies hold no template markup (the common case)
that is the whole MIME body, so ``Prepared.render(recipient, message_id)`` only formats the top
header block: building and serialising an ``EmailMessage`` costs about 0.9 ms, this about 10 us.
The bytes follow ``email.policy.SMTP`` with ``cte_type="7bit"`` (CRLF everywhere, headers folded
at 78, RFC 2047 for non-ASCII) and parse back to what the stdlib would have produced.

Nothing is sanitised but line ends: a body's LF line ends are written as CRLF, as every MTA does.
A CR or LF or another control character in a header value, or a CR outside a CRLF pair or a NUL
in a body, before or after substitution, raises a typed :class:`~streams.errors.RenderError`
naming the field (the rules are :mod:`streams.mail.headers`'). A message that silently differs
from what the producer sent would be worse than a dead letter, and the stray line endings are
exactly what header injection and SMTP smuggling need.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any, Final

from jinja2 import StrictUndefined, Template
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from streams.deliver.mimewire import (
    MIME_VERSION,
    POLICY,
    address_line,
    attachment_part,
    is_inline,
    message_id_line,
    multipart,
    new_boundary,
    recipient_line,
    text_part,
    unstructured_line,
)
from streams.deliver.tracking import Links, track_html, track_text
from streams.errors import (
    InvalidContentError,
    TemplateRenderError,
    UndefinedVariableError,
    UnknownTemplateError,
)
from streams.mail.headers import check_body, check_custom_headers, check_line

__all__ = [
    "ARGS_HEADER",
    "CATEGORIES_HEADER",
    "MAX_RENDERED_CHARS",
    "POLICY",
    "Prepared",
    "StoredTemplate",
    "prepare",
]

CATEGORIES_HEADER: Final = "X-Postwire-Categories"
ARGS_HEADER: Final = "X-Postwire-Args"
# One worker renders for every tenant, so one template must not be able to exhaust its memory.
MAX_RENDERED_CHARS: Final = 10_000_000
_MAX_EXPONENT: Final = 1024

_TEMPLATE_MARKER = re.compile(r"\{[{%#]")


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    """A tenant's stored template; a request's own subject/html/text override its parts."""

    subject: str | None = None
    html: str | None = None
    text: str | None = None


class _Sandbox(SandboxedEnvironment):
    """The jinja2 sandbox, which also refuses the one-line memory bombs (``'x' * 10**10``)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > MAX_RENDERED_CHARS:
                    raise SecurityError("repetition result is too large")
        return super().call_binop(context, operator, left, right)


def _environment(html: bool) -> _Sandbox:
    # CRLF sources stay CRLF (jinja rewrites line endings to newline_sequence); keeping the last
    # newline makes a template render to exactly its source when it holds no markup.
    return _Sandbox(
        autoescape=html,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        newline_sequence="\r\n",
        auto_reload=False,
    )


_ENVIRONMENTS: Final = {False: _environment(False), True: _environment(True)}


@lru_cache(maxsize=1024)
def _compile(source: str, html: bool) -> Template:
    # Stored templates come back request after request; compiling costs far more than rendering.
    return _ENVIRONMENTS[html].from_string(source)


@dataclass(frozen=True, slots=True)
class _Piece:
    """A subject, body or header value: a constant, or a compiled template to run per recipient."""

    field: str
    header: bool
    constant: str
    template: Template | None

    def render(self, context: Mapping[str, str]) -> str:
        if self.template is None:
            return self.constant
        value = _run(self.template, context, self.field)
        check = check_line if self.header else check_body
        check(self.field, value, "after substitution")
        return value


def _piece(field: str, source: str, *, header: bool, html: bool = False) -> _Piece:
    # Checked before compiling too: jinja would quietly turn a bare CR in the source into CRLF.
    (check_line if header else check_body)(field, source, "in the request")
    if not _TEMPLATE_MARKER.search(source):
        return _Piece(field, header, source, None)
    try:
        template = _compile(source, html)
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(field, f"line {exc.lineno}: {exc.message}") from exc
    except TemplateError as exc:
        raise TemplateRenderError(field, f"does not compile: {exc}") from exc
    return _Piece(field, header, source, template)


def _run(template: Template, context: Mapping[str, str], field: str) -> str:
    chunks: list[str] = []
    size = 0
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise TemplateRenderError(field, f"renders over {MAX_RENDERED_CHARS} characters")
            chunks.append(chunk)
    except UndefinedError as exc:
        raise UndefinedVariableError(field, f"{exc.message}: no such substitution") from exc
    except SecurityError as exc:
        raise TemplateRenderError(field, f"refused by the sandbox: {exc}") from exc
    except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
        raise TemplateRenderError(field, f"{type(exc).__name__}: {exc}") from exc
    return "".join(chunks)


@dataclass(frozen=True, slots=True)
class _TrackChoice:
    """What a request's tracking_settings turned on for its HTML part."""

    opens: bool
    clicks: bool
    text_clicks: bool = False


@dataclass(frozen=True, slots=True)
class _Text:
    """A text/plain or text/html leaf whose source is a template, or an HTML leaf whose links
    and pixel are the recipient's own (``track``)."""

    piece: _Piece
    subtype: str
    track: _TrackChoice | None = None

    def render(self, context: Mapping[str, str], links: Links | None) -> bytes:
        text = self.piece.render(context)
        if self.track is not None and links is not None:
            if self.subtype == "html":
                text = track_html(text, links, opens=self.track.opens, clicks=self.track.clicks)
            else:
                text = track_text(text, links)
        return text_part(text, self.subtype)


@dataclass(frozen=True, slots=True)
class _Multipart:
    """A multipart node with at least one templated descendant."""

    subtype: str
    children: tuple[_Node, ...]
    boundary: bytes  # already checked against the constant children

    def render(self, context: Mapping[str, str], links: Links | None) -> bytes:
        parts = [_serialise(child, context, links) for child in self.children]
        clash = any(
            self.boundary in part
            for child, part in zip(self.children, parts, strict=True)
            if not isinstance(child, bytes)
        )
        return multipart(self.subtype, parts, None if clash else self.boundary)


_Node = bytes | _Text | _Multipart


def _serialise(node: _Node, context: Mapping[str, str], links: Links | None) -> bytes:
    return node if isinstance(node, bytes) else node.render(context, links)


def _text_node(piece: _Piece | None, subtype: str) -> _Node | None:
    if piece is None:
        return None
    if piece.template is None:
        return text_part(piece.constant, subtype)
    return _Text(piece, subtype)


def _tracking_choice(content: Mapping[str, Any]) -> _TrackChoice | None:
    """Open and click tracking asked for by the request (``content.tracking``), if any."""
    tracking = content.get("tracking")
    if not tracking or not (tracking.get("open") or tracking.get("click")):
        return None
    clicks = bool(tracking.get("click"))
    return _TrackChoice(
        bool(tracking.get("open")), clicks, clicks and bool(tracking.get("click_text"))
    )


def _plain_node(piece: _Piece | None, track: _TrackChoice | None) -> _Node | None:
    # the text part's URLs are rewritten only when click_tracking.enable_text says so
    if piece is None or track is None or not track.text_clicks:
        return _text_node(piece, "plain")
    return _Text(piece, "plain", track)


def _html_node(piece: _Piece | None, track: _TrackChoice | None) -> _Node | None:
    # A tracked HTML part differs per recipient (its tokens), so it is never serialised ahead.
    if piece is None or track is None:
        return _text_node(piece, "html")
    return _Text(piece, "html", track)


def _multipart_node(subtype: str, children: Sequence[_Node]) -> _Node:
    # Serialised now when nothing below depends on the recipient: the common case, where every
    # recipient gets the same body bytes (and DKIM hashes that body once).
    constant = [child for child in children if isinstance(child, bytes)]
    if len(constant) == len(children):
        return multipart(subtype, constant)
    return _Multipart(subtype, tuple(children), new_boundary(constant))


def _date(value: object) -> datetime:
    if isinstance(value, int) and not isinstance(value, bool):
        value = datetime.fromtimestamp(value / 1000, UTC)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidContentError("created_at", "the Date header needs an aware datetime")
    return value


def _custom_headers(headers: Mapping[str, str]) -> Iterator[bytes | tuple[str, _Piece]]:
    check_custom_headers(headers, "content.headers")
    for name, value in headers.items():
        piece = _piece(f"content.headers.{name}", value, header=True)
        yield unstructured_line(name, value) if piece.template is None else (name, piece)


def _args_line(args: Mapping[str, str]) -> bytes:
    return unstructured_line(ARGS_HEADER, json.dumps(args, ensure_ascii=True, sort_keys=True))


class Prepared:
    """The invariant part of one request's messages; render it once per recipient.

    Immutable after :func:`prepare`, so it can be cached (for instance by request id, since a
    DeliveryTask carries one recipient) and shared between tasks.
    """

    __slots__ = (
        "_args",
        "_args_line",
        "_body",
        "_headers",
        "_sender",
        "_sender_domain",
        "_subject",
        "_substitutions",
        "_tracked",
    )

    def __init__(
        self,
        *,
        sender: bytes,
        subject: bytes | _Piece | None,
        headers: Sequence[bytes | tuple[str, _Piece]],
        body: _Node,
        substitutions: Mapping[str, str],
        custom_args: Mapping[str, str],
        sender_domain: str,
        tracked: bool = False,
    ) -> None:
        self._sender = sender
        self._subject = subject
        self._headers = tuple(headers)
        self._body = body
        self._substitutions = dict(substitutions)
        self._args = dict(custom_args)
        self._args_line = _args_line(self._args) if self._args else b""
        self._sender_domain = sender_domain
        self._tracked = tracked

    @property
    def sender_domain(self) -> str:
        """The ASCII (IDNA) domain of ``from``: it picks the DKIM key."""
        return self._sender_domain

    @property
    def static_body(self) -> bool:
        """Whether every recipient gets the same MIME body bytes (no template in the bodies)."""
        return isinstance(self._body, bytes)

    @property
    def tracked(self) -> bool:
        """Whether the HTML part carries tracking links: ``render`` wants the recipient's."""
        return self._tracked

    def render(
        self,
        recipient: Mapping[str, Any],
        message_id: str,
        added: bytes = b"",
        links: Links | None = None,
    ) -> bytes:
        """The message for one Recipient record, with CRLF line endings, ready to sign.
        ``added`` is header lines the pipeline adds per recipient (List-Unsubscribe); ``links``
        are the recipient's tracking URLs when the request asked for tracking."""
        extra = recipient.get("substitutions")
        context = {**self._substitutions, **extra} if extra else self._substitutions
        out = [self._sender, recipient_line(recipient)]
        subject = self._subject
        if isinstance(subject, _Piece):
            out.append(unstructured_line("Subject", subject.render(context)))
        elif subject is not None:
            out.append(subject)
        out.append(message_id_line(message_id, self._sender_domain))
        for header in self._headers:
            if isinstance(header, bytes):
                out.append(header)
            else:
                name, piece = header
                out.append(unstructured_line(name, piece.render(context)))
        if extra_args := recipient.get("custom_args"):
            out.append(_args_line({**self._args, **extra_args}))
        else:
            out.append(self._args_line)
        out.append(added)
        out.append(MIME_VERSION)
        out.append(_serialise(self._body, context, links))
        return b"".join(out)


def _sources(
    content: Mapping[str, Any], template: StoredTemplate | None
) -> tuple[str | None, str | None, str | None]:
    template_id = content.get("template_id")
    stored = StoredTemplate()
    if template_id is not None:
        if template is None:
            raise UnknownTemplateError("content.template_id", f"no stored template {template_id!r}")
        stored = template
    subject, text, html = (content.get(key) for key in ("subject", "text", "html"))
    return (
        subject if subject is not None else stored.subject,
        text if text is not None else stored.text,
        html if html is not None else stored.html,
    )


def prepare(task: Mapping[str, Any], template: StoredTemplate | None = None) -> Prepared:
    """Check, compile and serialise what every recipient of ``task``'s request shares.

    ``template`` is the stored template ``content.template_id`` names. Raises a
    :class:`~streams.errors.RenderError` subclass naming the field at fault.
    """
    content = task.get("content")
    if not content:
        raise InvalidContentError("content", "a send request needs content")
    subject, text, html = _sources(content, template)
    if text is None and html is None:
        raise InvalidContentError("content", "neither text nor html nor a template")
    sender = task.get("from")
    if not sender or not sender.get("email"):
        raise InvalidContentError("from.email", "a send request needs a sender")
    sender_line, domain = address_line("From", "from", sender)
    if reply_to := task.get("reply_to"):
        sender_line += address_line("Reply-To", "reply_to", reply_to)[0]
    subject_piece = _piece("content.subject", subject, header=True) if subject is not None else None
    date = format_datetime(_date(task.get("created_at")))
    headers: list[bytes | tuple[str, _Piece]] = [f"Date: {date}\r\n".encode("ascii")]
    headers.extend(_custom_headers(content.get("headers") or {}))
    if categories := task.get("categories"):
        headers.append(unstructured_line(CATEGORIES_HEADER, json.dumps(list(categories))))
    parts = [attachment_part(i, a) for i, a in enumerate(content.get("attachments") or [])]
    inline = [p.as_bytes() for p in parts if html is not None and is_inline(p)]
    attached = [p.as_bytes() for p in parts if html is None or not is_inline(p)]
    track = _tracking_choice(content)
    text_piece = _piece("content.text", text, header=False) if text else None
    text_node = _plain_node(text_piece, track)
    html_piece = _piece("content.html", html, header=False, html=True) if html else None
    html_node = _html_node(html_piece, track)
    if html_node is not None and inline:
        html_node = _multipart_node("related", [html_node, *inline])
    alternatives = [node for node in (text_node, html_node) if node is not None]
    if not alternatives:
        raise InvalidContentError("content", "text and html are both empty")
    body = alternatives[0]
    if len(alternatives) > 1:
        body = _multipart_node("alternative", alternatives)
    if attached:
        body = _multipart_node("mixed", [body, *attached])
    constant_subject = subject_piece is not None and subject_piece.template is None
    return Prepared(
        sender=sender_line,
        subject=(
            unstructured_line("Subject", subject_piece.constant)
            if subject_piece is not None and constant_subject
            else subject_piece
        ),
        headers=headers,
        body=body,
        substitutions=task.get("substitutions") or {},
        custom_args=task.get("custom_args") or {},
        sender_domain=domain,
        tracked=track is not None
        and (html_piece is not None or (text_piece is not None and track.text_clicks)),
    )
