"""TXT lookups through the configured resolver (aiodns) against the loopback zone server: what
sender verification and the DKIM record check read. No Kafka needed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.bench.dns_server import Zone, ZoneServer
from streams.mail.dns import MxResolver, TxtAnswer

pytestmark = pytest.mark.integration


@pytest.fixture
def zone_server() -> Iterator[ZoneServer]:
    zone = Zone()
    zone.txt["one.example"] = "v=spf1 -all"
    zone.txt["two.example"] = ["postwire-verification=a", "postwire-verification=b"]
    zone.txt["long.example"] = "p=" + "k" * 600  # three character-strings on the wire
    zone.a["notext.example"] = "127.0.0.1"  # exists, but has no TXT record
    zone.silent.add("slow.example")
    server = ZoneServer(zone, host="127.0.0.53", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_txt_answers_say_what_was_found(zone_server: ZoneServer) -> None:
    resolver = MxResolver([zone_server.nameserver], timeout=0.5, tries=1)
    assert await resolver.txt("one.example") == TxtAnswer("ok", ("v=spf1 -all",))
    two = await resolver.txt("two.example")
    assert sorted(two.values) == ["postwire-verification=a", "postwire-verification=b"]
    assert (await resolver.txt("long.example")).values == ("p=" + "k" * 600,)
    assert (await resolver.txt("notext.example")).status == "no_data"
    assert (await resolver.txt("missing.example")).status == "nxdomain"
    slow = await resolver.txt("slow.example")
    assert slow.status == "timeout"
    assert slow.error
