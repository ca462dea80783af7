"""The List-Unsubscribe pair of bulk mail: which tasks get it, its shape, DKIM over it."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default
from typing import Any

import dkim

from streams.deliver.dkim import DkimKey, Signer, keygen
from streams.deliver.mime import prepare
from streams.deliver.unsubscribe import header_lines, one_click, unsubscribe_url
from streams.mail.headers import ONE_CLICK
from streams.mail.unsubscribe import decode, recipient_tag
from streams.secret import ServerSecret
from tests.unit.deliver.test_mime import CREATED, make_task

SECRET = ServerSecret(bytes(range(32)))
MESSAGE_ID = "0123456789abcdef0123456789abcdef"
BASE = "https://mail.example.net/"
KEY = keygen("rsa")


def task(priority: str = "bulk", **content: Any) -> dict[str, Any]:
    return make_task(**content) | {
        "tenant": "shop",
        "message_id": MESSAGE_ID,
        "priority": priority,
        "recipient": {"email": "Ann@Example.com", "name": "Ann", "kind": "to"},
    }


def test_bulk_and_normal_mail_get_both_headers() -> None:
    add = one_click(SECRET, BASE, "bounces.example.net")
    for priority in ("bulk", "normal"):
        lines = add(task(priority))  # type: ignore[arg-type]
        message = message_from_bytes(b"From: a@b.example\r\n" + lines + b"\r\nx", policy=default)
        value = str(message["List-Unsubscribe"])
        url, mailto = (part.strip().strip("<>") for part in value.split(","))
        assert url.startswith("https://mail.example.net/u/u")
        token = url.rsplit("/", 1)[1]
        assert mailto == f"mailto:{token}@bounces.example.net"
        found = decode(SECRET, token)
        assert found.message_id == MESSAGE_ID
        assert found.tag == recipient_tag(SECRET, "shop", MESSAGE_ID, "ann@example.com")
        assert found.group_id is None
        assert message["List-Unsubscribe-Post"] == ONE_CLICK
        assert "ann" not in value.lower()


def test_transactional_mail_gets_none() -> None:
    add = one_click(SECRET, BASE, "bounces.example.net")
    assert add(task("high")) == b""  # type: ignore[arg-type]
    assert add(task("critical")) == b""  # type: ignore[arg-type]


def test_no_mailto_without_a_bounce_domain() -> None:
    lines = one_click(SECRET, BASE)(task())  # type: ignore[arg-type]
    assert b"mailto:" not in lines
    assert lines.startswith(b"List-Unsubscribe: <https://mail.example.net/u/u")


def test_the_senders_own_list_unsubscribe_is_kept() -> None:
    own = {"list-unsubscribe": "<mailto:leave@shop.example>"}
    assert one_click(SECRET, BASE, "b.example")(task(headers=own)) == b""  # type: ignore[arg-type]


def test_the_lines_are_folded_between_the_uris() -> None:
    url = unsubscribe_url(BASE, "u" + "a" * 60)
    lines = header_lines(url, "u" + "a" * 60 + "@bounces.example.net")
    first, second, post, end = lines.split(b"\r\n")
    assert first == f"List-Unsubscribe: <{url}>,".encode()
    assert second.startswith(b" <mailto:")
    assert post == b"List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    assert end == b""


def test_the_pair_is_dkim_signed() -> None:
    t = task()
    raw = prepare(t).render(t["recipient"], "<m1@shop.example>", one_click(SECRET, BASE)(t))  # type: ignore[arg-type]
    key = DkimKey.from_pem("shop.example", "s1", KEY[0])
    signed = Signer(lambda _t, _d: key).sign(raw, "shop", "shop.example", CREATED)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return KEY[1].encode()

    assert dkim.verify(signed, dnsfunc=dnsfunc)
    header = signed.split(b"\r\n\r\n", 1)[0].decode()
    signed_names = header.split(" h=", 1)[1].split(";", 1)[0].replace("\r\n", "").replace(" ", "")
    assert "list-unsubscribe:list-unsubscribe" in signed_names
    assert "list-unsubscribe-post" in signed_names
    altered = signed.replace(b"/u/u", b"/u/x", 1)
    assert not dkim.verify(altered, dnsfunc=dnsfunc)
