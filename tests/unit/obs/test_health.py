"""The readiness verdict and the probe's memory, without I/O."""

from __future__ import annotations

import asyncio

from streams.kafka.metadata import Metadata, unready_topics
from streams.obs.health import Check, Probe, ProbeResult, phase_checks, probe_check, verdict


def test_ready_only_when_every_check_holds_and_every_failure_is_a_reason() -> None:
    assert verdict([Check("a", True), Check("b", True, detail={"x": 1})]).body() == {
        "ok": True,
        "reasons": [],
        "b": {"x": 1},
    }
    found = verdict([Check("a", False, "a is down"), Check("b", True), Check("c", False)])
    assert not found.ok
    assert found.reasons == ["a is down", "c"]  # a check without a reason names itself


def test_stage_phases_become_reasons_naming_stage_and_partitions() -> None:
    checks = phase_checks(
        "stage",
        {"gate": "recovering [0, 1]", "verify": "starting", "deferral": "running"},
    )
    found = verdict(checks)
    assert found.reasons == ["recovering gate[0, 1]", "stage verify starting"]
    assert verdict(phase_checks("sink", {"requests": "running"})).ok


def test_a_probe_answer_counts_only_while_fresh() -> None:
    fresh = ProbeResult(True, None, checked_at=100.0, ok_at=100.0)
    assert probe_check("kafka", fresh, now=104.0, stale_after=21.0).ok
    stale = probe_check("kafka", fresh, now=130.0, stale_after=21.0)
    assert not stale.ok
    assert stale.reason == "kafka probe stale: last answer 30 s ago"
    never = probe_check("postgres", ProbeResult(), now=1.0, stale_after=21.0)
    assert not never.ok
    assert never.reason == "postgres not checked yet"
    down = ProbeResult(False, "timed out after 2 s", checked_at=120.0, ok_at=100.0)
    found = probe_check("postgres", down, now=121.0, stale_after=21.0)
    assert not found.ok
    assert found.reason == "postgres unreachable: timed out after 2 s"
    assert found.detail == {"ok": False, "last_ok_s_ago": 21.0, "error": "timed out after 2 s"}


async def test_a_probe_remembers_failures_timeouts_and_the_last_success() -> None:
    now = [0.0]
    answers: list[str] = ["ok", "raise", "hang", "ok"]

    async def check() -> None:
        answer = answers.pop(0)
        if answer == "raise":
            raise OSError("connection refused")
        if answer == "hang":
            await asyncio.sleep(10)

    probe = Probe("db", check, interval=1.0, timeout=0.05, clock=lambda: now[0])
    assert not probe.check().ok
    assert await probe.once()
    now[0] = 5.0
    assert not await probe.once()
    assert probe.check().reason == "db unreachable: OSError: connection refused"
    assert probe.result.ok_at == 0.0  # the last success is kept
    now[0] = 6.0
    assert not await probe.once()
    assert probe.check().reason == "db unreachable: timed out after 0.05 s"
    now[0] = 7.0
    assert await probe.once()
    assert probe.check().ok
    assert probe.result.ok_at == 7.0


async def test_a_running_probe_stops_on_its_event() -> None:
    calls = 0
    stop = asyncio.Event()

    async def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()

    probe = Probe("k", check, interval=0.01, timeout=1.0)
    task = asyncio.create_task(probe.run(stop))
    await asyncio.wait_for(task, 5.0)
    assert calls == 3
    assert probe.check().ok


def test_topics_missing_or_without_a_leader_are_named() -> None:
    metadata = Metadata(1, {"a": (2, 2), "b": (1, 2)})
    assert unready_topics(metadata, ["a", "b", "c"]) == (["c"], ["b"])
    assert unready_topics(metadata, ["a"]) == ([], [])
