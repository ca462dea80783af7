"""Who fetched a tracking URL (pure): the client's address, and whether a machine did it.

Most opens today are not a person reading: Apple Mail Privacy Protection fetches every image of
every message on delivery, from Apple's network with a bare ``Mozilla/5.0`` user agent; Gmail and
Yahoo fetch images through their proxies (``GoogleImageProxy``, ``YahooMailProxy``); security
gateways follow every link of a message as it arrives, often with a HEAD request or a crawler's
user agent. Such events are still recorded (a proxy open does say the message reached the
mailbox) but carry ``reason`` = ``machine: <what>``, so they are not counted as human.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = ["SCANNER_WINDOW", "client_ip", "machine_reason"]

MACHINE: Final = "machine"
# a click this soon after the message was sent is a gateway scanning it, not its reader
SCANNER_WINDOW: Final = 2.0
_APPLE: Final = ipaddress.ip_network("17.0.0.0/8")  # Apple's own block: MPP's image fetchers
_APPLE_AGENT: Final = "Mozilla/5.0"  # all MPP sends, where a browser sends a full one
_PROXIES: Final = (
    ("googleimageproxy", "gmail image proxy"),
    ("yahoomailproxy", "yahoo mail proxy"),
    ("ymailproxy", "yahoo mail proxy"),
)
_SCANNERS: Final = (
    "barracuda",
    "mimecast",
    "proofpoint",
    "messagelabs",
    "symantec",
    "trendmicro",
    "trend micro",
    "ironport",
    "forcepoint",
    "zscaler",
    "sophos",
    "bitdefender",
    "fortiguard",
    "safelinks",
    "urldefense",
    "headlesschrome",
    "phantomjs",
    "python-requests",
    "go-http-client",
    "libwww-perl",
    "wget/",
    "curl/",
    "crawler",
    "spider",
    "bot/",
    "bot;",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """The trusted proxies' networks (addresses or CIDR); ValueError names a bad one."""
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)


def client_ip(
    remote: str | None, forwarded: Sequence[str], trusted: Sequence[Network]
) -> str | None:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the last
    ``X-Forwarded-For`` hop that is not one (a client can prepend anything, so only what trusted
    proxies appended is believed)."""
    peer = _address(remote)
    if peer is None or not any(peer in n for n in trusted):
        return str(peer) if peer is not None else None
    hops = [h.strip() for value in forwarded for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        found = _address(hop)
        if found is None:
            break
        if not any(found in n for n in trusted):
            return str(found)
    return str(peer)


def machine_reason(
    kind: str,
    *,
    method: str,
    user_agent: str | None,
    ip: str | None,
    issued_at: float,
    now: float,
) -> str | None:
    """``machine: <what>`` for an open (``o``) or click (``c``) a machine made, else None."""
    if method.upper() == "HEAD":
        return f"{MACHINE}: HEAD request (link scanner)"
    agent = (user_agent or "").strip()
    if not agent:
        return f"{MACHINE}: no user agent"
    lowered = agent.lower()
    for token, name in _PROXIES:
        if token in lowered:
            return f"{MACHINE}: {name}"
    address = _address(ip)
    if kind == "o" and (agent == _APPLE_AGENT or (address is not None and address in _APPLE)):
        return f"{MACHINE}: apple mail privacy protection"
    for token in _SCANNERS:
        if token in lowered:
            return f"{MACHINE}: scanner user agent ({token.strip('/;')})"
    if kind == "c" and now - issued_at < SCANNER_WINDOW:
        return f"{MACHINE}: clicked {max(now - issued_at, 0):.1f} s after sending (link scanner)"
    return None
