"""Shaping's pure core: which replies a rule matches, counts within a window, suspensions and
rate cuts, their expiry, merging states from other processes, and the throttle's scaled bucket."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from streams.deliver.shaping import Reply, Rule, Shaping, SiteState
from streams.deliver.shaping_feed import ShapingFeed
from streams.deliver.shaping_file import rules_from
from streams.deliver.throttle import DestinationLimits, DestinationThrottle, Limit
from streams.settings import Settings

YAHOO_MX = "mta5.am0.yahoodns.net"
TSS04 = Reply(
    421,
    "4.7.0",
    "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or "
    "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
    YAHOO_MX,
)


def suspend_rule(**kw: object) -> Rule:
    values: dict[str, object] = {
        "name": "tss04",
        "action": "suspend",
        "duration": 600.0,
        "codes": frozenset({421}),
        "enhanced": frozenset({"4.7.0"}),
        "pattern": re.compile(r"\[TSS04\]", re.I),
        "mx_suffixes": ("yahoodns.net",),
    }
    values.update(kw)
    return Rule(**values)  # type: ignore[arg-type]


def test_a_rule_matches_code_enhanced_text_and_mx_suffix() -> None:
    rule = suspend_rule()
    assert rule.matches(TSS04)
    assert not rule.matches(Reply(451, "4.7.0", TSS04.text, YAHOO_MX))  # another code
    assert not rule.matches(Reply(421, "4.7.1", TSS04.text, YAHOO_MX))  # another enhanced
    assert not rule.matches(Reply(421, "4.7.0", "4.7.0 [TSS09] deferred", YAHOO_MX))
    assert not rule.matches(Reply(421, "4.7.0", TSS04.text, "mx.example.com"))
    # a suffix counts on a label boundary only
    assert not rule.matches(Reply(421, "4.7.0", TSS04.text, "mx.notyahoodns.net"))
    assert rule.matches(Reply(421, "4.7.0", TSS04.text, "YAHOODNS.NET."))
    # a transport error has no reply to match
    assert not rule.matches(Reply(None, None, "timeout", YAHOO_MX))


def test_an_empty_matcher_part_matches_anything() -> None:
    rule = Rule("any-421", "suspend", 60.0, codes=frozenset({421}))
    assert rule.matches(Reply(421, None, "whatever", ""))
    assert rule.matches(Reply(421, "4.4.2", "busy", "mx.anywhere.example"))
    assert not rule.matches(Reply(450, None, "whatever", ""))


def test_suspend_fires_on_the_first_match_and_expires() -> None:
    shaping = Shaping([suspend_rule()])
    fired = shaping.observe("yahoo.com", TSS04, 1000.0)
    assert [(f.rule, f.action, f.until) for f in fired] == [("tss04", "suspend", 1600.0)]
    held = shaping.suspension("yahoo.com", 1000.0)
    assert held is not None
    assert held.suspend_rule == "tss04"
    assert "[TSS04]" in held.suspend_reply
    assert held.suspend_reply.startswith("421 4.7.0 [TSS04]")  # the code once, not twice
    assert shaping.suspension("YAHOO.com.", 1599.9) is not None  # the site name normalised
    assert shaping.suspension("yahoo.com", 1600.0) is None  # expiry restores the site
    assert shaping.suspension("other.example", 1000.0) is None
    assert shaping.prune(1600.0) == ["yahoo.com"]
    assert shaping.sites(1600.0) == []


def test_a_count_within_the_window_is_needed_before_it_fires() -> None:
    rule = Rule("busy", "slow", 300.0, codes=frozenset({421}), factor=0.5, count=3, window=60.0)
    shaping = Shaping([rule])
    busy = Reply(421, None, "try again later", "mx.example")
    assert shaping.observe("s", busy, 0.0) == []
    assert shaping.observe("s", busy, 30.0) == []
    # the first has left the window by now: two within 60 s, not three
    assert shaping.observe("s", busy, 61.0) == []
    fired = shaping.observe("s", busy, 70.0)
    assert [(f.action, f.factor, f.until) for f in fired] == [("slow", 0.5, 370.0)]
    assert shaping.rate_factor("s", 100.0) == 0.5
    assert shaping.rate_factor("s", 370.0) == 1.0
    # the count starts again after firing
    assert shaping.observe("s", busy, 71.0) == []


def test_counts_are_per_site() -> None:
    rule = Rule("busy", "slow", 60.0, codes=frozenset({421}), factor=0.5, count=2)
    shaping = Shaping([rule])
    busy = Reply(421, None, "busy", "")
    assert shaping.observe("a", busy, 0.0) == []
    assert shaping.observe("b", busy, 1.0) == []
    assert len(shaping.observe("a", busy, 2.0)) == 1
    assert shaping.rate_factor("b", 3.0) == 1.0


def test_a_later_firing_extends_and_a_shorter_one_does_not_shorten() -> None:
    long = suspend_rule(name="long", duration=600.0)
    short = suspend_rule(name="short", duration=60.0, pattern=re.compile("TSS04"))
    shaping = Shaping([long, short])
    fired = shaping.observe("y", TSS04, 0.0)
    assert {f.rule for f in fired} == {"long", "short"}  # every matching rule counts
    state = shaping.suspension("y", 0.0)
    assert state is not None
    assert (state.suspended_until, state.suspend_rule) == (600.0, "long")
    shaping.observe("y", TSS04, 500.0)
    state = shaping.suspension("y", 500.0)
    assert state is not None
    assert state.suspended_until == 1100.0


def test_fired_states_are_published_once_and_applied_states_are_not() -> None:
    shaping = Shaping([suspend_rule()])
    shaping.observe("y", TSS04, 0.0)
    published = shaping.take_published()
    assert [s.site for s in published] == ["y"]
    assert shaping.take_published() == []
    other = Shaping([suspend_rule()])
    assert other.apply(published[0]) is True
    assert other.apply(published[0]) is False  # read back twice: nothing changes
    assert other.suspension("y", 10.0) is not None
    assert other.take_published() == []


def test_apply_merges_each_part_by_the_later_end() -> None:
    shaping = Shaping()
    shaping.apply(SiteState("s", suspended_until=100.0, suspend_rule="a"))
    shaping.apply(SiteState("s", slowed_until=500.0, factor=0.25, slow_rule="b"))
    shaping.apply(SiteState("s", suspended_until=50.0, suspend_rule="c"))  # ends earlier
    state = shaping.state("s", 10.0)
    assert state is not None
    assert (state.suspended_until, state.suspend_rule) == (100.0, "a")
    assert (state.slowed_until, state.factor, state.slow_rule) == (500.0, 0.25, "b")
    assert shaping.suspension("s", 200.0) is None
    assert shaping.rate_factor("s", 200.0) == 0.25


def test_lift_forgets_the_state_and_the_counts() -> None:
    rule = Rule("busy", "suspend", 60.0, codes=frozenset({421}), count=2)
    shaping = Shaping([rule])
    busy = Reply(421, None, "busy", "")
    shaping.observe("s", busy, 0.0)
    shaping.lift("s")
    assert shaping.observe("s", busy, 1.0) == []  # the first match was forgotten
    shaping.observe("s", busy, 2.0)
    assert shaping.suspension("s", 3.0) is not None
    shaping.lift("S.")
    assert shaping.suspension("s", 3.0) is None


def test_a_state_round_trips_and_bad_records_are_refused() -> None:
    state = SiteState("yahoo.com", 10.0, "tss04", "421 [TSS04]", 20.0, 0.5, "busy", "421 busy")
    assert SiteState.decode(state.encode()) == state
    for raw in (b"not json", b"[]", b'{"suspended_until": 1}', b'{"site": "a", "factor": "x"}'):
        with pytest.raises(ValueError, match="not a shaping state"):
            SiteState.decode(raw)


def test_the_reply_kept_masks_addresses_and_is_bounded() -> None:
    said = Reply(421, None, "421 busy for <bob@example.com>\n  try later " + "x" * 500, "")
    text = said.describe()
    assert "bob@example.com" not in text
    assert "<address>" in text
    assert "\n" not in text
    assert len(text) <= 240


def test_rule_values_are_checked() -> None:
    with pytest.raises(ValueError, match="factor"):
        Rule("r", "slow", 60.0, codes=frozenset({421}), factor=1.5)
    with pytest.raises(ValueError, match="duration"):
        Rule("r", "suspend", 0.0, codes=frozenset({421}))
    with pytest.raises(ValueError, match="count"):
        Rule("r", "suspend", 1.0, codes=frozenset({421}), count=0)


def test_the_throttle_scales_a_sites_bucket_and_restores_it() -> None:
    limits = DestinationLimits(Limit(connections=5, rate=10.0, burst=10), overrides={})
    throttle = DestinationThrottle(limits)
    site = throttle.key("slow.example")
    for _ in range(10):
        assert throttle.take("t", "slow.example", 0.0) == 0.0
    throttle.scale(site, 0.1, 0.0)  # 1 a second, burst 1
    assert throttle.factor(site) == 0.1
    assert throttle.take("t", "slow.example", 0.0) == pytest.approx(1.0)
    assert throttle.take("t", "slow.example", 1.0) == 0.0
    assert throttle.take("t", "slow.example", 1.5) == pytest.approx(0.5)
    throttle.scale(site, 1.0, 2.0)
    assert throttle.factor(site) == 1.0
    assert throttle.take("t", "slow.example", 2.0) == 0.0
    assert throttle.take("t", "slow.example", 2.05) == pytest.approx(0.05)  # 10 a second again
    # a bucket made while the cut holds is made cut
    other = DestinationThrottle(limits)
    other.scale("new.example", 0.5, 0.0)
    for _ in range(5):
        assert other.take("t", "new.example", 0.0) == 0.0
    assert other.take("t", "new.example", 0.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="rate factor"):
        other.scale("new.example", 0.0, 0.0)


def test_the_shipped_rules_catch_what_the_providers_say() -> None:
    shaping = Shaping(rules_from(None))
    assert {f.rule for f in shaping.observe("yahoo.com", TSS04, 0.0)} == {"yahoo-tss04"}
    assert shaping.suspension("yahoo.com", 3599.0) is not None
    outlook = "contoso-com.mail.protection.outlook.com"
    busy = Reply(
        451,
        "4.7.500",
        "4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714) "
        "[AM0PR01MB1234.eurprd01.prod.exchangelabs.com]",
        outlook,
    )
    assert shaping.observe("outlook.com", busy, 0.0) == []
    assert shaping.observe("outlook.com", busy, 1.0) == []
    assert [f.rule for f in shaping.observe("outlook.com", busy, 2.0)] == ["microsoft-server-busy"]
    assert shaping.rate_factor("outlook.com", 3.0) == 0.5
    blocked = Reply(
        550,
        "5.7.1",
        "5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your "
        "Internet service provider since part of their network is on our block list (S3150).",
        "hotmail-com.olc.protection.outlook.com",
    )
    assert [f.rule for f in shaping.observe("hotmail.com", blocked, 0.0)] == [
        "microsoft-blocklisted"
    ]
    gmail = Reply(
        421,
        "4.7.28",
        "4.7.28 [192.0.2.1 15] Our system has detected an unusual rate of\n"
        "4.7.28 unsolicited mail originating from your IP address. To protect our\n"
        "4.7.28 users from spam, mail sent from your IP address has been temporarily\n"
        "4.7.28 rate limited.",
        "gmail-smtp-in.l.google.com",
    )
    assert [f.rule for f in shaping.observe("gmail.com", gmail, 0.0)] == ["gmail-unusual-rate"]
    assert shaping.rate_factor("gmail.com", 1.0) == 0.25
    # the same wording from a host that is not Google's is only the generic rule's business
    assert shaping.observe("elsewhere.example", Reply(421, "4.7.28", gmail.text, "mx.x"), 0) == []
    generic = Reply(421, None, "Too many connections, try again later", "mx.small.example")
    assert shaping.observe("small.example", generic, 0.0) == []
    assert shaping.observe("small.example", generic, 1.0) == []
    assert [f.rule for f in shaping.observe("small.example", generic, 2.0)] == ["generic-421-busy"]
    # greylisting and a full mailbox are about one message, not the site
    for reply in (
        Reply(451, "4.7.1", "4.7.1 Greylisted, please try again later", "mx.g.example"),
        Reply(452, "4.2.2", "4.2.2 Mailbox full", "mx.g.example"),
    ):
        for t in range(5):
            assert shaping.observe("g.example", reply, float(t)) == []


def suspended_gauge() -> float | None:
    return REGISTRY.get_sample_value("postwire_shaping_sites", {"state": "suspended"})


def test_the_feed_folds_states_and_tombstones_into_the_shaping(tmp_path: Path) -> None:
    shaping = Shaping([suspend_rule()])
    feed = ShapingFeed(Settings(data_dir=tmp_path).kafka, shaping)
    far = time.time() + 600
    state = SiteState("yahoo.com", suspended_until=far, suspend_rule="tss04", suspend_reply="421")
    feed.apply(b"yahoo.com", state.encode())
    assert shaping.suspension("yahoo.com", time.time()) == state
    assert shaping.take_published() == []  # another process's state is not published again
    # a record whose key names another site, a record that is no state, an unkeyed one
    other = SiteState("other.example", suspended_until=far, suspend_rule="x")
    feed.apply(b"elsewhere.example", other.encode())
    feed.apply(b"broken.example", b"{not json")
    feed.apply(None, other.encode())
    assert [s.site for s in shaping.sites(time.time())] == ["yahoo.com"]
    assert suspended_gauge() == 1
    feed.apply(b"YAHOO.com", None)  # an operator's resume-site
    assert shaping.sites(time.time()) == []
    assert suspended_gauge() == 0
