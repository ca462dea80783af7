"""Link rewriting and the pixel: structure kept, opt-outs and non-web links left alone."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from streams.deliver.tracking import Tracker, track_html, track_text
from streams.mail.track_token import open_token
from streams.secret import ServerSecret

SECRET = ServerSecret(bytes(range(32)))
LINKS = Tracker(SECRET, "https://t.example/").links("ten", "m1", "ann@example.com", 1_700_000_000)

DOC = (
    "<!DOCTYPE html>\r\n<html><head><style>a{color:red}</style></head>\r\n<body>\r\n"
    '<p>Hi <a class="b" href="https://shop.example/p?id=7&amp;x=y" target=_blank>shop</a></p>\r\n'
    '<a href="mailto:help@example.com">mail</a> <a href="tel:+123">call</a>\r\n'
    '<a href="#top">top</a> <a href="/relative">rel</a>\r\n'
    '<a href="https://keep.example/" clicktracking=off>keep</a>\r\n'
    '<!-- <a href="https://comment.example/">c</a> -->\r\n'
    '<map><area shape="rect" href="http://area.example/x"></map>\r\n'
    "</body></html>\r\n"
)


def _hrefs(text: str) -> list[str]:
    found: list[str] = []

    class P(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(v or "" for k, v in attrs if k == "href")

    P().feed(text)
    return found


def test_links_rewritten_and_pixel_before_body_end() -> None:
    out = track_html(DOC, LINKS, opens=True, clicks=True)
    hrefs = _hrefs(out)
    tracked = [h for h in hrefs if h.startswith("https://t.example/t/c/")]
    assert len(tracked) == 2
    urls = [open_token(SECRET, "c", h.rsplit("/", 1)[1]).url for h in tracked]
    assert urls == ["https://shop.example/p?id=7&x=y", "http://area.example/x"]
    assert "mailto:help@example.com" in hrefs
    assert "tel:+123" in hrefs
    assert "#top" in hrefs
    assert "/relative" in hrefs
    assert "https://keep.example/" in hrefs
    assert '<a href="https://keep.example/" clicktracking=off>keep</a>' in out
    assert '<!-- <a href="https://comment.example/">c</a> -->' in out  # comments untouched
    pixel = re.search(r'<img src="(https://t\.example/t/o/[^"]+)"[^>]*/></body>', out)
    assert pixel is not None
    ref = open_token(SECRET, "o", pixel.group(1).rsplit("/", 1)[1])
    assert (ref.tenant, ref.message_id, ref.recipient) == ("ten", "m1", "ann@example.com")
    assert 'class="b"' in out
    assert 'target="_blank"' in out


def test_everything_but_the_rewritten_tags_is_kept() -> None:
    out = track_html(DOC, LINKS, opens=False, clicks=True)
    tag = re.compile(r'<(a|area) [^>]*href="https://t\.example/t/c/[^"]*"[^>]*>')
    original = re.compile(r'<a class="b" href="https://shop[^>]*>|<area shape[^>]*>')
    assert tag.sub("X", out) == original.sub("X", DOC)


def test_opens_only_and_no_body() -> None:
    out = track_html("<p>x <a href='https://a.example/'>a</a></p>", LINKS, opens=True, clicks=False)
    assert out.startswith("<p>x <a href='https://a.example/'>a</a></p><img src=")
    assert track_html(DOC, LINKS, opens=False, clicks=False) == DOC


def test_unsealable_urls_stay_untracked() -> None:
    long = "https://a.example/" + "x" * 5000
    source = f'<a href="{long}">l</a><a href="https://a.example/\x1fz">c</a>'
    assert track_html(source, LINKS, opens=False, clicks=True) == source


def test_text_urls_rewritten_with_their_punctuation_kept() -> None:
    source = "See https://shop.example/a?b=1. Or (http://x.example/p), mailto:a@b.example\r\n"
    out = track_text(source, LINKS)
    found = re.findall(r"https://t\.example/t/c/([A-Za-z0-9_-]+)", out)
    assert [open_token(SECRET, "c", t).url for t in found] == [
        "https://shop.example/a?b=1",
        "http://x.example/p",
    ]
    assert re.sub(r"https://t\.example/t/c/[A-Za-z0-9_-]+", "U", out) == (
        "See U. Or (U), mailto:a@b.example\r\n"
    )
