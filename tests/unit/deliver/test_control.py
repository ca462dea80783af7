"""Queue control rules: hold/release/delete/flush against task metadata and times."""

from __future__ import annotations

import pytest

from streams.deliver.control import Command, ControlState, Selector, TaskMeta


def meta(domain: str = "a.example", created: int = 1000, released: int = 0, **kw: str) -> TaskMeta:
    return TaskMeta(
        kw.get("task_id", "t1"),
        kw.get("message_id", "m1"),
        kw.get("tenant", "acme"),
        domain,
        created,
        released,
    )


def test_selector_needs_something() -> None:
    with pytest.raises(ValueError, match="selector needs"):
        Selector()


def test_selector_matches_all_given_fields_and_normalises_domain() -> None:
    sel = Selector(domain="A.Example.", tenant="acme")
    assert sel.domain == "a.example"
    assert sel.matches(meta())
    assert not sel.matches(meta(tenant="other"))
    assert not sel.matches(meta(domain="b.example"))
    assert Selector(everything=True).matches(meta(domain="zzz"))


def test_command_round_trip_and_bad_input() -> None:
    cmd = Command("hold", Selector(message_id="m1"), 5000)
    back = Command.decode(cmd.encode())
    assert back == cmd
    with pytest.raises(ValueError, match="unknown action"):
        Command.decode(b'{"id":"x","action":"nuke","selector":{"everything":true},"at":1}')
    with pytest.raises(ValueError, match="not a control command"):
        Command.decode(b"garbage")


def test_hold_parks_matching_and_later_mail_until_release() -> None:
    state = ControlState()
    state.apply(Command("hold", Selector(domain="a.example"), 2000))
    assert state.verdict(meta(created=1000)) == "hold"
    assert state.verdict(meta(created=9000)) == "hold"  # a domain hold pauses new mail too
    assert state.verdict(meta(domain="b.example")) == "deliver"
    state.apply(Command("release", Selector(domain="a.example"), 3000))
    assert state.verdict(meta()) == "deliver"


def test_releasing_one_task_out_of_a_held_domain() -> None:
    state = ControlState()
    state.apply(Command("hold", Selector(domain="a.example"), 2000))
    state.apply(Command("release", Selector(task_id="t1"), 3000))
    # the domain hold stays; the task released at 3000 is free of holds older than that
    assert state.holds
    assert state.verdict(meta(released=3000)) == "deliver"
    assert state.verdict(meta(task_id="t2")) == "hold"


def test_delete_only_touches_mail_queued_before_it() -> None:
    state = ControlState()
    state.apply(Command("delete", Selector(tenant="acme"), 5000))
    assert state.verdict(meta(created=4000)) == "delete"
    assert state.verdict(meta(created=6000)) == "deliver"


def test_delete_beats_hold() -> None:
    state = ControlState()
    state.apply(Command("hold", Selector(everything=True), 1500))
    state.apply(Command("delete", Selector(message_id="m1"), 2000))
    assert state.verdict(meta(created=1000)) == "delete"


def test_flush_frees_what_waited_since_before_it() -> None:
    state = ControlState()
    state.apply(Command("flush", Selector(domain="a.example"), 5000))
    assert state.flushed(meta(), waiting_since=4000)
    assert not state.flushed(meta(), waiting_since=6000)
    assert not state.flushed(meta(domain="b.example"), waiting_since=4000)


def test_a_command_read_twice_applies_once_and_prune_forgets_old_ones() -> None:
    state = ControlState()
    cmd = Command("flush", Selector(everything=True), 1000)
    assert state.apply(cmd)
    assert not state.apply(cmd)
    assert len(state.flushes) == 1
    state.apply(Command("delete", Selector(everything=True), 1000))
    state.prune(now_ms=10_000, keep_ms=5_000)
    assert state.flushes == []
    assert state.deletes == []
