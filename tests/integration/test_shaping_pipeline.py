"""Shaping through the running pipeline (real Kafka, the tx and bulk worker processes, the CLI)
against loopback MXs that answer like Yahoo, Microsoft and Gmail: a rule that fires in one lane
process holds the site in the other, the server is not asked again until the suspension ends,
the mail comes back and is delivered afterwards, `postwire queue sites` shows the site, and
`postwire queue resume-site` lifts it everywhere.

A stack of its own: its shaping file shortens the shipped rules so a test waits seconds, not
hours, and its own DNS names MX hosts under the providers' suffixes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from streams.bench.dns_server import Zone, ZoneServer
from streams.cli.main import app
from streams.contract.codec import Codec
from streams.deliver.shaping import SiteState
from streams.deliver.shaping_feed import read_sites
from streams.errors import ConfigError
from streams.settings import Settings
from streams.stack.stack import Stack
from tests.conftest import pipeline_overrides, stack_settings
from tests.integration.helpers import eventually
from tests.integration.test_deliver_pipeline import _events, _send, _states, _tenant, send_request
from tests.peers.providers import GMAIL_RATE, MICROSOFT_BLOCK, YAHOO_TSS04, ProviderServer
from tests.peers.smtp_servers import free_port_on
from tests.peers.world import World

pytestmark = pytest.mark.integration

# clear of tests/peers/world.py (127.0.0.1x), test_transport.py (127.0.0.53-249) and
# test_shaping_deliverer.py (127.0.1.x)
PROVIDERS = {
    "yahoo": ("127.0.2.10", "mta6.am0.yahoodns.net"),
    "outlook": ("127.0.2.11", "shaping-example.mail.protection.outlook.com"),
    "gmail": ("127.0.2.12", "gmail-smtp-in.l.google.com"),
    "hold": ("127.0.2.13", "mx.hold.example"),
}
SUSPEND = 12.0  # seconds the test file suspends Yahoo and Microsoft for
RULES = f"""
[[rule]]
name = "yahoo-tss04"
duration = "{SUSPEND:g}s"

[[rule]]
name = "microsoft-blocklisted"
duration = "{SUSPEND:g}s"

[[rule]]
name = "gmail-unusual-rate"
factor = 0.05
duration = "40s"

[[rule]]
name = "hold-for-an-hour"
mx_suffixes = ["hold.example"]
code = 421
text = "hold this site"
action = "suspend"
duration = "1h"
"""


@dataclass
class Shaped:
    stack: Stack
    servers: dict[str, ProviderServer]

    @property
    def settings(self) -> Settings:
        return self.stack.settings


@pytest.fixture(scope="module")
def shaping_dns() -> Iterator[ZoneServer]:
    zone = Zone()
    for name, (address, mx_host) in PROVIDERS.items():
        zone.mx[f"{name}.example"] = [(10, mx_host)]
        zone.a[mx_host] = address
    server = ZoneServer(zone, host="127.0.2.53", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def shaped(
    tmp_path_factory: pytest.TempPathFactory, shaping_dns: ZoneServer
) -> AsyncIterator[Shaped]:
    port = free_port_on(PROVIDERS["yahoo"][0])
    servers = {
        name: ProviderServer(address, port, "250 OK", 0).start()
        for name, (address, _) in PROVIDERS.items()
    }
    data_dir = tmp_path_factory.mktemp("shaping-stack")
    rules = data_dir / "shaping.toml"
    rules.write_text(RULES)
    overrides = pipeline_overrides(World(shaping_dns, port))
    settings = stack_settings(data_dir, **overrides, shaping_file=rules)
    stack = Stack(settings, workers=True)
    await stack.start(detach=False)
    try:
        yield Shaped(stack, servers)
    finally:
        stack.stop()
        for server in servers.values():
            server.stop()


@pytest.fixture
async def db(shaped: Shaped) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(shaped.settings.dsn)
    yield conn
    await conn.close()


def _invoke(settings: Settings, *args: str) -> tuple[int, str]:
    env = {
        "POSTWIRE_KAFKA_BOOTSTRAP": settings.bootstrap,
        "POSTWIRE_TOPIC_PREFIX": settings.topic_prefix,
        "POSTWIRE_DATABASE_URL": settings.dsn,
        "COLUMNS": "240",  # rich would otherwise wrap the table's names at 80
    }
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


async def cli(settings: Settings, *args: str) -> tuple[int, str]:
    return await asyncio.to_thread(_invoke, settings, *args)


async def site_state(settings: Settings, site: str) -> SiteState | None:
    return next((s for s in await read_sites(settings.kafka) if s.site == site), None)


async def held(settings: Settings, site: str) -> SiteState:
    async def probe() -> SiteState | None:
        return await site_state(settings, site)

    state = await eventually(probe, lambda s: s is not None, timeout=60)
    assert state is not None, f"no shaping state for {site} on the topic"
    return state


@pytest.mark.parametrize(
    ("provider", "reply", "rule", "first"),
    [
        ("yahoo", YAHOO_TSS04, "yahoo-tss04", "delivered"),  # deferred, then delivered
        ("outlook", MICROSOFT_BLOCK, "microsoft-blocklisted", "bounced"),
    ],
)
async def test_a_suspension_holds_in_every_lane_until_it_ends(
    shaped: Shaped,
    codec: Codec,
    db: asyncpg.Connection,
    provider: str,
    reply: str,
    rule: str,
    first: str,
) -> None:
    settings, server = shaped.settings, shaped.servers[provider]
    site = f"{provider}.example"
    tenant, key = await _tenant(settings)
    server.refuse(reply, 1)
    # the transactional lane's process meets the provider's reply and suspends the site
    trip = send_request(tenant, [f"first@{site}"], priority="high")
    await _send(settings, codec, key, trip)
    state = await held(settings, site)
    assert state.suspend_rule == rule
    refused_at = max(a.at for a in server.asked_snapshot() if a.reply == reply)
    await asyncio.sleep(1.0)  # the bulk lane's process has read it from the topic
    # mail of the bulk lane's process to the same site waits for the suspension
    later = send_request(tenant, [f"two@{site}", f"three@{site}"], priority="bulk")
    await _send(settings, codec, key, later)
    assert time.time() < state.suspended_until - 5, "too slow to see the suspension hold"

    code, output = await cli(settings, "queue", "sites", "--json")
    assert code == 0, output
    [listed] = [s for s in json.loads(output) if s["site"] == site]
    assert listed["suspend_rule"] == rule
    assert reply.split()[2][:8] in listed["suspend_reply"]  # [TSS04] / Unfortu...
    assert listed["suspended_until"] == pytest.approx(refused_at + SUSPEND, abs=2.0)
    code, output = await cli(settings, "queue", "sites")
    assert code == 0, output
    assert site in output
    assert rule in output

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, later["request_id"])

    want = {f"two@{site}": "delivered", f"three@{site}": "delivered"}
    assert await eventually(states, lambda s: s == want, timeout=60) == want

    def trip_states() -> Awaitable[dict[str, str]]:
        return _states(db, trip["request_id"])

    assert await eventually(trip_states, lambda s: s == {f"first@{site}": first}) == {
        f"first@{site}": first
    }
    # the server was not asked again until the suspension was over
    after = [a for a in server.asked_snapshot() if a.at > refused_at]
    assert after, "the mail never came back"
    assert min(a.at for a in after) >= state.suspended_until - 0.05, (
        state.suspended_until,
        [(a.at, a.address) for a in after],
    )
    for address in (f"two@{site}", f"three@{site}"):
        [delivered] = server.delivered_to(address)
        assert delivered >= state.suspended_until
    events = await _events(db, later["request_id"])
    reasons = {e["reason"] for e in events if e["type"] == "deferred"}
    assert f"suspended: {rule}" in reasons, reasons


async def test_gmail_unusual_rate_slows_the_site_in_every_lane(
    shaped: Shaped, codec: Codec, db: asyncpg.Connection
) -> None:
    settings, server = shaped.settings, shaped.servers["gmail"]
    tenant, key = await _tenant(settings)
    server.refuse(GMAIL_RATE, 1)
    trip = send_request(tenant, ["first@gmail.example"], priority="high")
    await _send(settings, codec, key, trip)
    state = await held(settings, "gmail.example")
    assert (state.slow_rule, state.factor) == ("gmail-unusual-rate", 0.05)
    assert not state.suspended(time.time())
    code, output = await cli(settings, "queue", "sites")
    assert code == 0, output
    assert "slowed x0.05" in output
    await asyncio.sleep(1.0)
    # 50 a second with a burst of 10 at full rate; cut to 2.5 a second and a burst of 1
    addresses = [f"r{n}@gmail.example" for n in range(6)]
    bulk = send_request(tenant, addresses, priority="bulk")
    await _send(settings, codec, key, bulk)

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, bulk["request_id"])

    want = dict.fromkeys(addresses, "delivered")
    assert await eventually(states, lambda s: s == want, timeout=60) == want
    times = sorted(t for a in addresses for t in server.delivered_to(a))
    assert len(times) == len(addresses)
    # five gaps of 0.4 s at the cut rate (a little less for the session's own timing); at the
    # full rate all six go within a few tens of milliseconds
    assert times[-1] - times[0] >= 1.5, times


async def test_resume_site_lifts_a_suspension_everywhere(
    shaped: Shaped, codec: Codec, db: asyncpg.Connection
) -> None:
    settings, server = shaped.settings, shaped.servers["hold"]
    tenant, key = await _tenant(settings)
    server.refuse("421 4.7.0 please hold this site for a while", 1)
    trip = send_request(tenant, ["first@hold.example"], priority="bulk")
    await _send(settings, codec, key, trip)
    state = await held(settings, "hold.example")
    assert state.suspend_rule == "hold-for-an-hour"
    code, output = await cli(settings, "queue", "resume-site", "nowhere.example")
    assert code == 1
    assert "no site 'nowhere.example'" in output
    code, output = await cli(settings, "queue", "resume-site", "HOLD.example")
    assert code == 0, output
    assert "hold.example: resumed" in output

    async def gone() -> SiteState | None:
        return await site_state(settings, "hold.example")

    assert await eventually(gone, lambda s: s is None) is None
    code, output = await cli(settings, "queue", "sites", "--json")
    assert code == 0, output
    assert all(s["site"] != "hold.example" for s in json.loads(output))
    await asyncio.sleep(1.0)  # both lane processes have read the tombstone
    for priority in ("high", "bulk"):
        fresh = send_request(tenant, [f"{priority}@hold.example"], priority=priority)
        await _send(settings, codec, key, fresh)

        def states(request: dict[str, Any] = fresh) -> Awaitable[dict[str, str]]:
            return _states(db, request["request_id"])

        want = {f"{priority}@hold.example": "delivered"}
        # far sooner than the hour the rule suspended the site for
        assert await eventually(states, lambda s, w=want: s == w, timeout=30) == want


async def test_a_bad_shaping_file_stops_up_before_anything_starts(tmp_path: Path) -> None:
    rules = tmp_path / "shaping.toml"
    rules.write_text('[[rule]]\nname = "yahoo-tss04"\nduration = "soon"\n')
    settings = stack_settings(tmp_path / "data", shaping_file=rules)
    stack = Stack(settings, workers=True)
    with pytest.raises(ConfigError, match=r"rule 'yahoo-tss04': field duration"):
        await stack.start(detach=False)
    assert not (tmp_path / "data").exists()  # not even the data dir was made
