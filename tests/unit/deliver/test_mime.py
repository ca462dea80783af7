"""Rendering: structure, substitutions, templates, the sandbox, injection checks, encodings, and
the fast path against an EmailMessage built independently with the stdlib."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email import message_from_bytes
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, default
from typing import Any

import pytest

from streams.deliver.mime import ARGS_HEADER, CATEGORIES_HEADER, StoredTemplate, prepare
from streams.errors import (
    BareLineEndingError,
    ControlCharacterError,
    HeaderInjectionError,
    InvalidContentError,
    TemplateRenderError,
    UndefinedVariableError,
    UnknownTemplateError,
)

CREATED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
PDF = bytes(range(256)) * 40


def make_task(**content: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "subject": "Hello",
        "text": "Hi there\r\n",
        "html": None,
        "template_id": None,
        "headers": {},
        "attachments": [],
    }
    base.update(content)
    return {
        "from": {"email": "news@shop.example", "name": "Shop News"},
        "reply_to": None,
        "content": base,
        "substitutions": {},
        "categories": [],
        "custom_args": {},
        "created_at": CREATED,
    }


def recipient(email: str = "ann@example.com", name: str | None = "Ann", **extra: Any) -> dict:
    return {
        "email": email,
        "name": name,
        "kind": "to",
        "substitutions": {},
        "custom_args": {},
    } | extra


def attachment(**extra: Any) -> dict[str, Any]:
    base = {"filename": "report.pdf", "content_type": "application/pdf", "content": PDF}
    return base | {"disposition": "attachment", "content_id": None} | extra


def render(task: dict[str, Any], rcpt: dict[str, Any] | None = None, **kw: Any) -> EmailMessage:
    raw = prepare(task, **kw).render(rcpt or recipient(), "m1")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert raw.isascii()  # 7bit policy: non-ASCII only as RFC 2047 / QP / base64
    message = message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def text_of(part: Any) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


# -- structure -------------------------------------------------------------------------------


def test_text_only() -> None:
    message = render(make_task(text="Line one\r\nLine two"))
    assert message.get_content_type() == "text/plain"
    assert text_of(message) == "Line one\nLine two\n"
    assert message["MIME-Version"] == "1.0"
    assert message["Message-ID"] == "<m1@shop.example>"
    assert message["Date"].datetime == CREATED


def test_html_only() -> None:
    message = render(make_task(text=None, html="<p>Hi</p>"))
    assert message.get_content_type() == "text/html"
    assert text_of(message) == "<p>Hi</p>\n"


def test_text_and_html_are_alternatives() -> None:
    message = render(make_task(text="plain", html="<b>rich</b>"))
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert text_of(parts[1]) == "<b>rich</b>\n"


def test_attachments_make_multipart_mixed() -> None:
    task = make_task(text="t", html="<p>h</p>", attachments=[attachment()])
    message = render(task)
    assert message.get_content_type() == "multipart/mixed"
    body, pdf = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_filename() == "report.pdf"
    assert pdf.get_content_disposition() == "attachment"
    assert pdf.get_content() == PDF


def test_inline_image_goes_into_multipart_related() -> None:
    image = attachment(
        filename="logo.png", content_type="image/png", disposition="inline", content_id="logo1"
    )
    task = make_task(text="t", html='<img src="cid:logo1">', attachments=[image, attachment()])
    message = render(task)
    assert message.get_content_type() == "multipart/mixed"
    alternative, pdf = message.iter_parts()
    _text, related = alternative.iter_parts()
    assert related.get_content_type() == "multipart/related"
    html, logo = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert logo["Content-ID"] == "<logo1>"
    assert logo.get_content() == PDF
    assert pdf.get_filename() == "report.pdf"


def test_custom_headers_categories_and_args() -> None:
    task = make_task(headers={"List-Unsubscribe": "<mailto:u@shop.example>", "X-Tag": "a b"})
    task["categories"] = ["weekly", "promo"]
    task["custom_args"] = {"campaign": "c1", "shared": "request"}
    rcpt = recipient(custom_args={"shared": "recipient", "user": "42"})
    message = render(task, rcpt)
    assert message["List-Unsubscribe"] == "<mailto:u@shop.example>"
    assert message["X-Tag"] == "a b"
    assert json.loads(str(message[CATEGORIES_HEADER])) == ["weekly", "promo"]
    args = json.loads(str(message[ARGS_HEADER]))
    assert args == {"campaign": "c1", "shared": "recipient", "user": "42"}


def test_recipient_kinds() -> None:
    task = make_task()
    assert render(task, recipient(kind="cc"))["Cc"] == "Ann <ann@example.com>"
    bcc = prepare(task).render(recipient(email="secret@example.com", kind="bcc"), "m1")
    assert b"secret" not in bcc
    assert message_from_bytes(bcc, policy=default)["To"] == "undisclosed-recipients:;"


def test_message_id_is_normalised_and_checked() -> None:
    prepared = prepare(make_task())
    raw = prepared.render(recipient(), "<given@host.example>")
    assert message_from_bytes(raw, policy=default)["Message-ID"] == "<given@host.example>"
    with pytest.raises(InvalidContentError, match="message_id"):
        prepared.render(recipient(), "<no at sign>")


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        ({"from": None}, InvalidContentError, "from.email"),
        ({"content": None}, InvalidContentError, "content"),
        ({"content": {"text": None, "html": None}}, InvalidContentError, "content"),
        ({"content": {"template_id": "welcome"}}, UnknownTemplateError, "content.template_id"),
        ({"content": {"headers": {"Content-Type": "x"}}}, InvalidContentError, "Content-Type"),
        ({"from": {"email": "jörg@shop.example"}}, InvalidContentError, "from.email"),
        (
            {"content": {"attachments": [{"content": b"x", "disposition": "x"}]}},
            InvalidContentError,
            "disposition",
        ),
    ],
)
def test_invalid_requests(change: dict[str, Any], error: type[Exception], field: str) -> None:
    task = make_task()
    for key, value in change.items():
        task[key] = task[key] | value if isinstance(value, dict) and task[key] else value
    with pytest.raises(error, match=field):
        prepare(task)


def test_sender_domain_is_idna() -> None:
    task = make_task()
    task["from"] = {"email": "news@Bücher.example", "name": None}
    prepared = prepare(task)
    assert prepared.sender_domain == "xn--bcher-kva.example"
    message = message_from_bytes(prepared.render(recipient(), "m1"), policy=default)
    assert message["From"].addresses[0].domain == "xn--bcher-kva.example"


# -- substitutions and templates ------------------------------------------------------------


def test_per_recipient_substitutions_overlay_the_request() -> None:
    task = make_task(subject="News for {{ first }}", text="Hi {{ first }} from {{ shop }}")
    task["substitutions"] = {"first": "friend", "shop": "Shop"}
    prepared = prepare(task)
    assert not prepared.static_body
    ann = message_from_bytes(prepared.render(recipient(substitutions={"first": "Ann"}), "a"))
    anon = message_from_bytes(prepared.render(recipient(), "b"))
    assert ann["Subject"] == "News for Ann"
    assert ann.get_payload() == "Hi Ann from Shop\r\n"
    assert anon.get_payload() == "Hi friend from Shop\r\n"


def test_body_without_markers_is_literal_and_shared() -> None:
    task = make_task(text="Price: {price} }} {x", html="<p>{ a }</p>")
    prepared = prepare(task)
    assert prepared.static_body
    one = prepared.render(recipient(), "a")
    two = prepared.render(recipient(email="bob@example.com", name="Bob"), "b")
    assert one.partition(b"MIME-Version")[2] == two.partition(b"MIME-Version")[2]
    assert "Price: {price} }} {x" in text_of(
        message_from_bytes(one, policy=default).get_body(("plain",))
    )


def test_stored_template_and_request_override() -> None:
    stored = StoredTemplate(subject="Welcome {{ first }}", html="<p>Hi {{ first }}</p>", text=None)
    task = make_task(subject=None, text=None, template_id="welcome")
    task["substitutions"] = {"first": "<Ann>"}
    message = render(task, template=stored)
    assert message["Subject"] == "Welcome <Ann>"
    assert text_of(message) == "<p>Hi &lt;Ann&gt;</p>\n"  # autoescaped in HTML only
    task["content"]["subject"] = "Own subject"
    assert render(task, template=stored)["Subject"] == "Own subject"


def test_text_is_not_autoescaped() -> None:
    task = make_task(text="Hi {{ first }}")
    task["substitutions"] = {"first": "<Ann & co>"}
    assert text_of(render(task)) == "Hi <Ann & co>\n"


def test_undefined_variable_is_an_error() -> None:
    prepared = prepare(make_task(text="Hi {{ frist }}"))
    with pytest.raises(UndefinedVariableError, match=r"content\.text.*frist"):
        prepared.render(recipient(substitutions={"first": "Ann"}), "m1")


def test_syntax_error_is_reported_at_prepare() -> None:
    with pytest.raises(TemplateRenderError, match=r"content\.html: line 1"):
        prepare(make_task(html="<p>{% if %}</p>"))


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ 'x' * 100000000 }}",
        "{{ 2 ** 100000 }}",
    ],
)
def test_sandbox_refuses_escapes_and_bombs(source: str) -> None:
    prepared = prepare(make_task(text=source))
    with pytest.raises(TemplateRenderError, match=r"content\.text"):
        prepared.render(recipient(), "m1")


# -- injection and line endings -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"from": {"email": "a@shop.example", "name": "Evil\r\nBcc: x@evil.example"}}, "from.name"),
        ({"content": {"subject": "Hi\nBcc: x@evil.example"}}, "content.subject"),
        ({"content": {"headers": {"X-A": "ok\r\nBcc: x@evil.example"}}}, "X-A"),
        ({"content": {"headers": {"X-A\r\nBcc": "x"}}}, "X-A"),
        ({"reply_to": {"email": "r@shop.example\r", "name": None}}, "reply_to.email"),
    ],
)
def test_header_injection_in_the_request(change: dict[str, Any], field: str) -> None:
    task = make_task()
    for key, value in change.items():
        task[key] = task[key] | value if key == "content" else value
    with pytest.raises(HeaderInjectionError, match=field):
        prepare(task)


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"subject": "Hi {{ name }}"}, "content.subject"),
        ({"headers": {"X-User": "{{ name }}"}}, "X-User"),
    ],
)
def test_header_injection_through_substitution(content: dict[str, Any], field: str) -> None:
    prepared = prepare(make_task(**content))
    prepared.render(recipient(substitutions={"name": "fine"}), "m1")
    with pytest.raises(HeaderInjectionError, match=field):
        prepared.render(recipient(substitutions={"name": "x\r\nBcc: evil@evil.example"}), "m1")


def test_header_injection_through_recipient_name() -> None:
    prepared = prepare(make_task())
    with pytest.raises(HeaderInjectionError, match=r"recipient\.name"):
        prepared.render(recipient(name="Ann\nBcc: evil@evil.example"), "m1")


@pytest.mark.parametrize(
    ("content", "error", "field"),
    [
        ({"text": "one\rtwo"}, BareLineEndingError, "content.text"),
        ({"html": "<p>\r.\r\n</p>"}, BareLineEndingError, "content.html"),
        ({"text": "ends with\r\n\r"}, BareLineEndingError, "content.text"),
        ({"text": "nul\x00byte"}, ControlCharacterError, "content.text"),
    ],
)
def test_bare_cr_and_nul_in_the_body_are_refused(
    content: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        prepare(make_task(**content))


def body_of(task: dict[str, Any]) -> bytes:
    return prepare(task).render(recipient(), "m1").partition(b"MIME-Version: 1.0\r\n")[2]


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("one\ntwo\n", None),
        ("one\ntwo\n", "<p>\n.\n</p>\n"),
        ("Grüße\n" * 30, None),  # quoted-printable
        ("日本語のテキスト\n" * 30, None),  # base64
    ],
)
def test_lf_line_ends_are_written_as_crlf(text: str, html: str | None) -> None:
    lf = make_task(text=text, html=html)
    crlf = make_task(text=text.replace("\n", "\r\n"), html=html and html.replace("\n", "\r\n"))
    message = render(lf)  # asserts there is no bare LF in the bytes
    part = message.get_body(("plain",))
    assert part is not None
    assert text_of(part) == text
    if html is None:  # one part: no boundary, so the bytes can be compared
        assert body_of(lf) == body_of(crlf)
    else:
        assert b"\r\n.\r\n" in body_of(lf)  # a line with a dot: SMTP dot-stuffs it


@pytest.mark.parametrize("value", ["a\nb", "\r\n.\n"])
def test_lf_through_substitution_becomes_crlf(value: str) -> None:
    prepared = prepare(make_task(text="Hi {{ name }}\r\n"))
    raw = prepared.render(recipient(substitutions={"name": value}), "m1")
    assert b"\n" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    ("value", "error"), [("a\rb", BareLineEndingError), ("a\x00b", ControlCharacterError)]
)
def test_bare_cr_and_nul_through_substitution(value: str, error: type[Exception]) -> None:
    prepared = prepare(make_task(text="Hi {{ name }}\r\n", html="<p>{{ name }}</p>"))
    prepared.render(recipient(substitutions={"name": "ok\r\nok"}), "m1")
    with pytest.raises(error, match=r"content\.(text|html)"):
        prepared.render(recipient(substitutions={"name": value}), "m1")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject": "Hi \x1b[31mred"}, "content.subject"),
        ({"headers": {"X-A": "nul\x00"}}, "X-A"),
        ({"headers": {"X-A": "del\x7f"}}, "X-A"),
        ({"headers": {"X-A": "c1\x85"}}, "X-A"),
    ],
)
def test_control_characters_in_header_values(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ControlCharacterError, match=field):
        prepare(make_task(**change))


def test_control_characters_in_a_display_name() -> None:
    task = make_task()
    task["from"] = {"email": "news@shop.example", "name": "Shop\x07"}
    with pytest.raises(ControlCharacterError, match=r"from\.name"):
        prepare(task)


def test_a_tab_in_a_header_value_is_fine() -> None:
    assert render(make_task(subject="a\tb"))["Subject"] == "a\tb"


def test_one_click_unsubscribe_headers_pass_through() -> None:
    headers = {
        "List-Unsubscribe": "<https://shop.example/u/1>, <mailto:u@shop.example>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    message = render(make_task(headers=headers))
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Unsubscribe"].startswith("<https://shop.example/u/1>")


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}, "needs a List-Unsubscribe"),
        (
            {
                "List-Unsubscribe": "<mailto:u@x.example>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
            "https",
        ),
        ({"List-Unsubscribe": "<https://x.example/u>", "List-Unsubscribe-Post": "yes"}, "RFC 8058"),
        ({"Sender": "x@evil.example"}, "reserved"),
        ({"ARC-Seal": "i=1"}, "reserved"),
        ({"Resent-From": "x@evil.example"}, "reserved"),
        ({"X-Postwire-Args": "{}"}, "reserved"),
        ({"X-A": "1", "x-a": "2"}, "twice"),
        ({"X A": "1"}, "not a header name"),
    ],
)
def test_custom_header_rules(headers: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidContentError, match=match):
        prepare(make_task(headers=headers))


# -- encodings ------------------------------------------------------------------------------

NAMES = [
    "Jörg Müller",
    "Doe, John",
    'Say "hi" \\ there',
    "山田 太郎",
    "=?utf-8?q?not_encoded?=",
    "",
]
SUBJECTS = [
    "Grüße aus Köln",
    "Ünïcödé " * 20,
    "A long ASCII subject line that certainly needs folding because it is longer than 78",
    "=?utf-8?b?SGk=?= literal",
    "emoji 🎉 party",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("subject", SUBJECTS)
def test_non_ascii_headers_round_trip(name: str, subject: str) -> None:
    task = make_task(subject=subject)
    task["from"] = {"email": "news@shop.example", "name": name}
    message = render(task, recipient(name=name))
    assert message["Subject"] == subject
    for header in ("From", "To"):
        (address,) = message[header].addresses
        assert address.display_name == name
    raw = prepare(task).render(recipient(name=name), "m1")
    head = raw.partition(b"\r\n\r\n")[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78


# -- the fast path against the stdlib -------------------------------------------------------


def reference(task: dict[str, Any], rcpt: dict[str, Any], message_id: str) -> EmailMessage:
    """The same message built the slow way, with EmailMessage only (no templates)."""
    content = task["content"]
    message = EmailMessage(policy=SMTP.clone(cte_type="7bit"))
    message["From"] = Address(task["from"]["name"] or "", addr_spec=task["from"]["email"])
    message["To"] = Address(rcpt["name"] or "", addr_spec=rcpt["email"])
    message["Subject"] = content["subject"]
    message["Message-ID"] = message_id
    message["Date"] = task["created_at"]
    for name, value in content["headers"].items():
        message[name] = value
    if content["text"]:  # an empty text is no alternative
        message.set_content(content["text"], charset="utf-8")
        if content["html"] is not None:
            message.add_alternative(content["html"], subtype="html", charset="utf-8")
    else:
        message.set_content(content["html"], subtype="html", charset="utf-8")
    for a in content["attachments"]:
        maintype, subtype = a["content_type"].split("/")
        message.add_attachment(a["content"], maintype, subtype, filename=a["filename"])
    return message


def summary(message: Any) -> list[Any]:
    headers = sorted((k.lower(), str(v)) for k, v in message.items() if k.lower() != "content-type")
    parts = [
        (
            part.get_content_type(),
            sorted((k, v) for k, v in part["Content-Type"].params.items() if k != "boundary"),
            part.get_content_disposition(),
            part.get_filename(),
            None if part.is_multipart() else part.get_content(),
        )
        for part in message.walk()
    ]
    return [headers, parts]


LONG_LINE = "word " * 40 + "\r\n"
BODIES = [
    ("Plain ASCII\r\nsecond line", None),
    (None, "<p>only html</p>"),
    ("Plain", "<p>rich</p>"),
    (LONG_LINE * 3, "<p>" + "x" * 200 + "</p>"),  # quoted-printable
    ("Grüße\r\n" * 30, "<p>Ünïcödé</p>"),  # mostly ASCII: quoted-printable
    ("日本語のテキスト\r\n" * 30, None),  # mostly non-ASCII: base64
    ("", "<p></p>"),
]


@pytest.mark.parametrize(("text", "html"), BODIES)
@pytest.mark.parametrize("with_attachment", [False, True])
def test_fast_path_parses_like_the_stdlib(
    text: str | None, html: str | None, with_attachment: bool
) -> None:
    task = make_task(text=text, html=html, subject="Grüße, Ann", headers={"X-Campaign": "c1"})
    task["content"]["attachments"] = [attachment()] if with_attachment else []
    task["from"]["name"] = "Jörg"
    rcpt = recipient(name="Ann Example")
    prepared = prepare(task)
    fast = message_from_bytes(prepared.render(rcpt, "<m1@shop.example>"), policy=default)
    slow = message_from_bytes(reference(task, rcpt, "<m1@shop.example>").as_bytes(), policy=default)
    assert summary(fast) == summary(slow)
    # the same body with templates taken through the per-recipient path must parse alike too
    templated = make_task(
        text=text + "{{ '' }}" if text else text,
        html=None if html is None else html + "{{ '' }}",
        subject="Grüße, Ann",
        headers={"X-Campaign": "c1"},
        attachments=task["content"]["attachments"],
    )
    templated["from"]["name"] = "Jörg"
    dynamic = prepare(templated)
    assert not dynamic.static_body
    via_template = message_from_bytes(dynamic.render(rcpt, "<m1@shop.example>"), policy=default)
    assert summary(via_template) == summary(slow)
