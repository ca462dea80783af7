"""Tracking in rendered messages: per-recipient HTML, the text part untouched, opt-in only."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.policy import default
from typing import Any

from streams.deliver.mime import prepare
from streams.deliver.tracking import Tracker
from streams.mail.track_token import open_token
from streams.secret import ServerSecret
from tests.unit.deliver.test_mime import make_task, recipient

SECRET = ServerSecret(bytes(range(32)))
TRACKER = Tracker(SECRET, "https://t.example")
HTML = '<html><body><p>Hi {{ name }} <a href="https://shop.example/">shop</a></p></body></html>'


def _parts(raw: bytes) -> dict[str, str]:
    message: Any = message_from_bytes(raw, policy=default)
    return {p.get_content_type(): p.get_content() for p in message.walk() if not p.is_multipart()}


def _task(tracking: dict[str, bool] | None) -> dict[str, Any]:
    task = make_task(text="Hi https://shop.example/\r\n", html=HTML, tracking=tracking)
    task["substitutions"] = {"name": "you"}
    return task


def test_tracked_html_per_recipient() -> None:
    prepared = prepare(_task({"open": True, "click": True, "click_text": False}))
    assert prepared.tracked
    assert not prepared.static_body
    messages = {}
    for email in ("ann@example.com", "bob@example.com"):
        links = TRACKER.links("ten", "m1", email, 1_700_000_000)
        messages[email] = _parts(prepared.render(recipient(email), "<x@shop.example>", links=links))
    for email, parts in messages.items():
        assert parts["text/plain"].rstrip() == "Hi https://shop.example/"
        html = parts["text/html"]
        assert "Hi you" in html
        assert "https://shop.example/" not in html
        click = re.search(r'href="https://t\.example/t/c/([^"]+)"', html)
        pixel = re.search(r'src="https://t\.example/t/o/([^"]+)"', html)
        assert click is not None
        assert pixel is not None
        ref = open_token(SECRET, "c", click.group(1))
        assert (ref.recipient, ref.url) == (email, "https://shop.example/")
        assert open_token(SECRET, "o", pixel.group(1)).recipient == email


def test_untracked_unless_asked() -> None:
    for tracking in (None, {"open": False, "click": False, "click_text": False}):
        prepared = prepare(_task(tracking))
        assert not prepared.tracked
        links = TRACKER.links("ten", "m1", "ann@example.com", 1)
        html = _parts(prepared.render(recipient(), "<x@shop.example>", links=links))["text/html"]
        assert "t.example" not in html
        assert 'href="https://shop.example/"' in html


def test_tracked_request_without_a_tracker_renders_plain() -> None:
    prepared = prepare(_task({"open": True, "click": False, "click_text": False}))
    html = _parts(prepared.render(recipient(), "<x@shop.example>"))["text/html"]
    assert "<img" not in html


def test_text_part_rewritten_only_with_enable_text() -> None:
    links = TRACKER.links("ten", "m1", "ann@example.com", 1)
    for click_text, rewritten in ((False, False), (True, True)):
        prepared = prepare(_task({"open": False, "click": True, "click_text": click_text}))
        text = _parts(prepared.render(recipient(), "<x@shop.example>", links=links))["text/plain"]
        assert ("https://t.example/t/c/" in text) is rewritten
        assert ("https://shop.example/" in text) is not rewritten
