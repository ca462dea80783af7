"""The one-click pages and what an unsubscribe records (pure parts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

from streams.api.unsubscribe_routes import CONFIRM_PAGE, DONE_PAGE
from streams.inbound.decide import Target, unsubscribed

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "form":
            self.forms.append(dict(attrs))
        if tag == "input":
            self.inputs.append(dict(attrs))


def test_the_confirmation_page_posts_one_click_and_names_no_address() -> None:
    parsed = _Forms()
    parsed.feed(CONFIRM_PAGE)
    assert parsed.forms == [{"method": "post"}]  # to the page's own URL
    assert {"type": "hidden", "name": "List-Unsubscribe", "value": "One-Click"} in parsed.inputs
    for page in (CONFIRM_PAGE, DONE_PAGE):
        assert "@" not in page
        assert "noindex" in page


def test_an_unsubscribe_is_an_event_and_a_suppression_recorded_once() -> None:
    target = Target("shop", "m1", "ann@example.com", "r1", ("news",), {"c": "1"})
    first = unsubscribed(target, "one-click", NOW)
    again = unsubscribed(target, "one-click", NOW + timedelta(minutes=5))
    [event] = first.events
    [suppression] = first.suppressions
    assert event["type"] == "unsubscribed"
    assert (event["tenant"], event["message_id"], event["recipient"]) == (
        "shop",
        "m1",
        "ann@example.com",
    )
    assert event["categories"] == ["news"]
    assert suppression["reason"] == "unsubscribe"
    assert suppression["address"] == "ann@example.com"
    assert again.events[0]["event_id"] == event["event_id"]  # a second click changes nothing
