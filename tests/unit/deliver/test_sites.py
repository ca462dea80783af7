"""Destination sites: their names, the limits they match, the rate a process's slots give it, and
the in-process slot accounting."""

from __future__ import annotations

import pytest

from streams.deliver.sites import apportion, relay_site, site_hosts, site_name
from streams.deliver.throttle import DestinationLimits, Limit
from streams.mail.pool import LocalSlots, Slot


def test_a_site_is_its_hosts_normalised_and_sorted() -> None:
    google = ["ALT1.ASPMX.L.GOOGLE.COM.", "aspmx.l.google.com", " alt2.aspmx.l.google.com "]
    assert site_name(google) == "alt1.aspmx.l.google.com,alt2.aspmx.l.google.com,aspmx.l.google.com"
    # the order of the DNS answer and repeats do not change it
    assert site_name(reversed(google)) == site_name([*google, "aspmx.l.google.com"])


def test_domains_on_the_same_hosts_share_a_site_and_others_do_not() -> None:
    assert site_name(["mx1.host.example", "mx2.host.example"]) == site_name(
        ["mx2.host.example", "mx1.host.example"]
    )
    assert site_name(["mx1.host.example"]) != site_name(["mx1.host.example", "mx2.host.example"])


def test_a_site_needs_a_host() -> None:
    with pytest.raises(ValueError, match="at least one host"):
        site_name(["", "."])


def test_relay_sites_and_their_hosts() -> None:
    assert relay_site("Smtp.Relay.Example.", 587) == "smtp.relay.example:587"
    assert site_hosts("smtp.relay.example:587") == ("smtp.relay.example",)
    assert site_hosts("a.example,b.example") == ("a.example", "b.example")


@pytest.mark.parametrize(
    ("hosts", "key"),
    [
        (["aspmx.l.google.com", "alt1.aspmx.l.google.com"], "google.com"),
        (["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"], "yahoodns.net"),
        (["example-com.mail.protection.outlook.com"], "outlook.com"),
        (["mx.notgoogle.com"], None),
    ],
)
def test_a_site_matches_the_overrides_of_its_hosts(hosts: list[str], key: str | None) -> None:
    assert DestinationLimits().site_match(site_name(hosts)) == key


def test_the_most_specific_override_among_the_hosts_wins() -> None:
    wide, narrow = Limit(connections=50), Limit(connections=1)
    limits = DestinationLimits(overrides={"example.com": wide, "slow.example.com": narrow})
    site = site_name(["mx.example.com", "mx.slow.example.com"])
    assert limits.for_site(site) is narrow
    assert limits.for_site(relay_site("relay.example.com", 25)) is wide
    assert limits.for_site(site_name(["mx.other.example"])) is limits.default


@pytest.mark.parametrize(
    ("held", "rate", "burst"),
    [(0, 10.0, 2.0), (1, 10.0, 2.0), (2, 20.0, 4.0), (4, 40.0, 8.0), (9, 40.0, 8.0)],
)
def test_the_rate_follows_the_slots_held(held: int, rate: float, burst: float) -> None:
    assert apportion(40.0, 8, 4, held) == (pytest.approx(rate), pytest.approx(burst))


def test_the_shares_of_all_holders_add_up_to_the_site_rate() -> None:
    # 10 slots spread over 3 processes: together they may send at the site's rate, no more
    shares = [apportion(50.0, 10, 10, held)[0] for held in (5, 3, 2)]
    assert sum(shares) == pytest.approx(50.0)


def test_the_burst_of_a_small_share_is_still_one_message() -> None:
    assert apportion(5.0, 2, 20, 1) == (pytest.approx(0.25), 1.0)


async def test_local_slots_count_per_group_up_to_the_limit() -> None:
    slots = LocalSlots(lambda group: 2 if group == "a" else 1)
    a0, a1 = await slots.open_connection("a"), await slots.open_connection("a")
    assert a0 is not None
    assert a1 is not None
    assert {a0.number, a1.number} == {0, 1}
    assert await slots.open_connection("a") is None
    b = await slots.open_connection("b")
    assert b is not None
    assert b.number == 0
    assert (slots.held("a"), slots.held("b"), slots.held("c")) == (2, 1, 0)
    slots.close_connection(a0)
    assert slots.held("a") == 1
    again = await slots.open_connection("a")
    assert again is not None
    assert again.number == a0.number
    assert again.held


async def test_local_slots_refuse_a_slot_given_back_twice() -> None:
    slots = LocalSlots(lambda _group: 1)
    slot = await slots.open_connection("a")
    assert slot is not None
    slots.close_connection(slot)
    with pytest.raises(ValueError, match="no open connection"):
        slots.close_connection(slot)
    with pytest.raises(ValueError, match="no open connection"):
        slots.close_connection(Slot("never", 0))
    assert slots.held("a") == 0
