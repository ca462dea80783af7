"""Machine opens and clicks, and the client address behind trusted proxies."""

from __future__ import annotations

import pytest

from streams.api.machine import client_ip, machine_reason, networks

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/17.0"


def _reason(
    kind: str,
    agent: str | None,
    *,
    ip: str = "203.0.113.9",
    method: str = "GET",
    after: float = 600.0,
) -> str | None:
    return machine_reason(
        kind, method=method, user_agent=agent, ip=ip, issued_at=1000.0, now=1000.0 + after
    )


def test_humans_are_not_flagged() -> None:
    assert _reason("o", BROWSER) is None
    assert _reason("c", BROWSER) is None


@pytest.mark.parametrize(
    ("agent", "ip", "word"),
    [
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            "66.249.84.1",
            "gmail",
        ),
        (
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            "1.2.3.4",
            "yahoo",
        ),
        ("Mozilla/5.0", "203.0.113.9", "apple"),
        (BROWSER, "17.58.1.2", "apple"),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", "1.2.3.4", "barracuda"),
        (None, "1.2.3.4", "no user agent"),
    ],
)
def test_proxies_and_scanners_open(agent: str | None, ip: str, word: str) -> None:
    reason = _reason("o", agent, ip=ip)
    assert reason is not None
    assert reason.startswith("machine: ")
    assert word in reason


def test_scanner_clicks() -> None:
    assert "HEAD" in (_reason("c", BROWSER, method="HEAD") or "")
    assert "after sending" in (_reason("c", BROWSER, after=0.8) or "")
    assert _reason("c", BROWSER, after=5.0) is None
    assert "python-requests" in (_reason("c", "python-requests/2.31") or "")
    # an Apple address clicking is a person behind Private Relay, not MPP prefetching
    assert _reason("c", BROWSER, ip="17.58.1.2") is None


def test_client_ip_honours_trusted_proxies_only() -> None:
    trusted = networks(["10.0.0.0/8", "192.0.2.1"])
    assert client_ip("198.51.100.7", ["6.6.6.6"], trusted) == "198.51.100.7"  # not a proxy
    assert client_ip("10.1.2.3", ["6.6.6.6, 203.0.113.5"], trusted) == "203.0.113.5"
    assert client_ip("10.1.2.3", ["203.0.113.5, 192.0.2.1"], trusted) == "203.0.113.5"
    assert client_ip("10.1.2.3", [], trusted) == "10.1.2.3"
    assert client_ip("10.1.2.3", ["not-an-ip"], trusted) == "10.1.2.3"
    assert client_ip(None, [], trusted) is None
