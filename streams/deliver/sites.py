"""Destination sites, as KumoMTA names them: the set of MX hosts a domain's mail goes to (pure).

Every domain a provider hosts lists the same MX hosts (thousands of Google Workspace domains
point at ``aspmx.l.google.com`` and its alternates), so the site, not the recipient domain, is
what a receiver sees connections and messages from: mail is limited (connections, messages/s),
queued and shaped per site. A site's name is its hosts, normalised, deduplicated and sorted, joined
by commas, so the same set always gives the same name whatever the order of the DNS answer; in
relay mode every message goes to one site, the relay's ``host:port``.

Limits across processes (``apportion``): a site limited to N connections has N slots, and a worker
holding k of them may send at ``rate * k / N``. The shares of all the processes add up to at most
the site's rate because their slots add up to at most N, and no message waits for another
process: the only coordination is the slot taken when a connection opens.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["apportion", "normalise_host", "relay_site", "site_hosts", "site_name"]


def normalise_host(name: str) -> str:
    return name.strip().rstrip(".").lower()


def site_name(hosts: Iterable[str]) -> str:
    """The site of a domain whose mail goes to ``hosts`` (its MX hosts, in any order)."""
    names = sorted({normalise_host(host) for host in hosts} - {""})
    if not names:
        raise ValueError("a site needs at least one host")
    return ",".join(names)


def relay_site(host: str, port: int) -> str:
    """The one site of relay mode."""
    return f"{normalise_host(host)}:{port}"


def site_hosts(site: str) -> tuple[str, ...]:
    """The host names of ``site`` (a relay's without its port), to match limits against."""
    return tuple(name.rpartition(":")[0] or name for name in site.split(",") if name)


def apportion(rate: float, burst: int, connections: int, held: int) -> tuple[float, float]:
    """The messages/s and burst of a process holding ``held`` of a site's ``connections``
    slots. One holding none still gets one slot's share: its next message opens a connection,
    which takes a slot, or waits for one; the burst is never below one message."""
    share = min(max(held, 1), connections) / connections
    return rate * share, max(1.0, burst * share)
