"""The fake internet of the tests: one DNS server and an MX server per behaviour, each on its
own 127.0.0.x address, all on one SMTP port (the probe's configured port)."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.bench.dns_server import Zone, ZoneServer
from tests.peers.smtp_servers import MxBehaviour, MxServer, StallServer, free_port_on

__all__ = ["World", "start_world"]

HOSTS = {
    "normal": "127.0.0.11",
    "catchall": "127.0.0.12",
    "grey": "127.0.0.13",
    "amx": "127.0.0.14",
    "stall": "127.0.0.15",
    "full": "127.0.0.16",
    "dead": "127.0.0.17",  # nothing listens here
    "flaky": "127.0.0.18",
    # accepts every recipient, for tests that deliver to addresses of their own
    "inbox": "127.0.0.19",
}


@dataclass
class World:
    dns: ZoneServer
    smtp_port: int
    mx: dict[str, MxServer] = field(default_factory=dict)
    stall: StallServer | None = None

    def stop(self) -> None:
        for server in self.mx.values():
            server.stop()
        if self.stall is not None:
            self.stall.stop()
        self.dns.stop()


def build_zone() -> Zone:
    zone = Zone()

    def mx_to(domain: str, host_key: str, pref: int = 10) -> None:
        mx_host = f"mx.{host_key}.mx.example"
        zone.mx.setdefault(domain, []).append((pref, mx_host))
        zone.a[mx_host] = HOSTS[host_key]

    mx_to("normal.example", "normal")
    mx_to("xn--bcher-kva.example", "normal")  # bücher.example
    mx_to("catchall.example", "catchall")
    mx_to("grey.example", "grey")
    mx_to("stall.example", "stall")
    mx_to("full.example", "full")
    mx_to("flaky.example", "flaky")
    mx_to("inbox.example", "inbox")
    # the preferred MX is down: the probe must fall back to the next one
    mx_to("backup.example", "dead", pref=5)
    mx_to("backup.example", "normal", pref=20)
    for domain in ("mailinator.com", "gmial.com", "gmail.com"):
        mx_to(domain, "normal")
    zone.mx["nullmx.example"] = [(0, ".")]
    zone.a["amx.example"] = HOSTS["amx"]  # no MX: the A record is the implicit MX
    zone.txt["nomail.example"] = "v=spf1 -all"  # exists, but neither MX nor A
    zone.silent.add("slowdns.example")
    return zone


def start_world() -> World:
    dns = ZoneServer(build_zone())
    dns.start()
    port = free_port_on(HOSTS["normal"])
    world = World(dns, port)
    behaviours = {
        "normal": MxBehaviour(users={"alice", "bob", "info", "joe", "x"}),
        "catchall": MxBehaviour(catch_all=True),
        "inbox": MxBehaviour(catch_all=True),
        "grey": MxBehaviour(rcpt_reply="451 4.7.1 Greylisted, please try again later"),
        "amx": MxBehaviour(users={"carol"}),
        "flaky": MxBehaviour(users={"fred"}, defer_first=True),
        "full": MxBehaviour(
            users={"dave"},
            replies={"full@full.example": "452 4.2.2 Mailbox full"},
        ),
    }
    for name, behaviour in behaviours.items():
        server = MxServer(HOSTS[name], port, behaviour)
        server.start()
        world.mx[name] = server
    world.stall = StallServer(HOSTS["stall"], port)
    world.stall.start()
    return world
