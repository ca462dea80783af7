"""Open and click tracking in a rendered HTML body (pure).

``track_html`` rewrites each followable link (``<a href>``/``<area href>`` with an http or https
URL) to ``<public base>/t/c/<token>`` and puts a 1x1 pixel ``<public base>/t/o/<token>`` before
the last ``</body>`` (at the end when there is none). The document is read by the standard
library's HTML tokenizer (``html.parser``, the one html5-ish tokenizer that reports where each tag
starts in the source), and only the start tags it rewrites are replaced: every other byte of the
body, its comments, scripts, conditional comments and odd markup, stays as the sender wrote it.

Left alone: ``mailto:``, ``tel:``, ``sms:`` and other non-web schemes, in-page anchors (``#x``),
relative links (nothing to redirect to), links marked ``clicktracking=off`` (SendGrid's
opt-out attribute), URLs with control characters and URLs too long for a token (a few KB): those
tags stay byte for byte as written.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Final

from streams.mail.track_token import MAX_TOKEN_CHARS, TrackKind, TrackRef, seal_token
from streams.secret import ServerSecret

__all__ = ["OPT_OUT", "Links", "Tracker", "track_html", "track_text"]

OPT_OUT: Final = "clicktracking"
_LINK_TAGS: Final = frozenset({"a", "area"})
_WEB_SCHEMES: Final = ("http://", "https://")
# a bare URL in plain text ends at white space or markup-ish quoting; sentence punctuation
# right after it is the sentence's, as mail clients that make such URLs clickable assume
_TEXT_URL: Final = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_TRAILING: Final = ".,;:!?)]}"


@dataclass(frozen=True, slots=True)
class Links:
    """The tracking URLs of one recipient's message."""

    secret: ServerSecret
    base: str
    tenant: str
    message_id: str
    recipient: str
    issued_at: int

    def _ref(self, url: str | None) -> TrackRef:
        kind: TrackKind = "c" if url is not None else "o"
        return TrackRef(kind, self.tenant, self.message_id, self.recipient, self.issued_at, url)

    def pixel(self) -> str:
        return f"{self.base}/t/o/{seal_token(self.secret, self._ref(None))}"

    def click(self, url: str) -> str | None:
        """The tracked URL, or None for one whose token would be too long to open."""
        token = seal_token(self.secret, self._ref(url))
        return None if len(token) > MAX_TOKEN_CHARS else f"{self.base}/t/c/{token}"


@dataclass(frozen=True, slots=True)
class Tracker:
    """Issues the links of each message under the install's secret and public base URL."""

    secret: ServerSecret
    base: str

    def links(self, tenant: str, message_id: str, recipient: str, issued_at: int) -> Links:
        return Links(self.secret, self.base.rstrip("/"), tenant, message_id, recipient, issued_at)


def _trackable(attrs: list[tuple[str, str | None]]) -> str | None:
    """The URL a link tag's click should be recorded for, or None to leave it as it is."""
    values = dict(attrs)
    if (values.get(OPT_OUT) or "").strip().lower() == "off":
        return None
    href = (values.get("href") or "").strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in href):
        return None  # not a URL a browser follows as written; never sealed into a token
    return href if href.lower().startswith(_WEB_SCHEMES) else None


Attrs = tuple[tuple[str, str | None], ...]


def _start_tag(tag: str, attrs: Attrs, href: str) -> str:
    out = [f"<{tag}"]
    for name, value in attrs:
        if name == OPT_OUT:
            continue
        written = href if name == "href" else value
        quoted = None if written is None else html.escape(written, quote=True)
        out.append(f" {name}" if quoted is None else f' {name}="{quoted}"')
    return "".join(out) + ">"


class _Scanner(HTMLParser):
    """Finds the link tags to rewrite and the last ``</body>``, as source offsets."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self._lines = [0] + [i + 1 for i, c in enumerate(source) if c == "\n"]
        self.links: list[tuple[int, int, str, Attrs, str]] = []
        self.body_end: int | None = None

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._lines[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _LINK_TAGS:
            return
        url = _trackable(attrs)
        raw = self.get_starttag_text()
        if url is not None and raw is not None:
            start = self._offset()
            self.links.append((start, start + len(raw), tag, tuple(attrs), url))

    def handle_endtag(self, tag: str) -> None:
        if tag == "body":
            self.body_end = self._offset()


def _pixel(url: str) -> str:
    return (
        f'<img src="{html.escape(url, quote=True)}" width="1" height="1" alt=""'
        ' style="display:block;border:0;width:1px;height:1px;" />'
    )


@lru_cache(maxsize=64)
def _scan(source: str) -> tuple[tuple[tuple[int, int, str, Attrs, str], ...], int | None]:
    # Every recipient of a request without templates has the same HTML: tokenizing it (the
    # bulk of the cost, in pure Python) once per request leaves only the sealing per recipient.
    scanner = _Scanner(source)
    scanner.feed(source)
    scanner.close()
    return tuple(scanner.links), scanner.body_end


def track_html(source: str, links: Links, *, opens: bool, clicks: bool) -> str:
    """``source`` with its links rewritten (``clicks``) and the pixel added (``opens``)."""
    if not (opens or clicks):
        return source
    found, body_end = _scan(source)
    edits: list[tuple[int, int, str]] = []
    if clicks:
        for start, end, tag, attrs, url in found:
            tracked = links.click(url)
            if tracked is not None:
                edits.append((start, end, _start_tag(tag, attrs, tracked)))
    if opens:
        at = body_end if body_end is not None else len(source)
        edits.append((at, at, _pixel(links.pixel())))
    out: list[str] = []
    cursor = 0
    for start, end, text in sorted(edits, key=lambda e: e[0]):
        out.append(source[cursor:start])
        out.append(text)
        cursor = end
    out.append(source[cursor:])
    return "".join(out)


def track_text(source: str, links: Links) -> str:
    """A plain-text part with its bare http(s) URLs replaced by click-tracking ones
    (SendGrid's ``click_tracking.enable_text``)."""

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        url = found.rstrip(_TRAILING)
        tracked = links.click(url) if url else None
        return found if tracked is None else tracked + found[len(url) :]

    return _TEXT_URL.sub(replace, source)
