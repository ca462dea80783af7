"""The pure parts of `postwire bench load`: schedules, mix, percentiles, the report and its
pass/fail lines, memory checks, the state gauge parser, and the SMTP blackhole's protocol."""

from __future__ import annotations

import math
from collections import Counter
from itertools import islice, pairwise
from typing import Any

import pytest

from streams.bench.blackhole import SmtpBlackhole
from streams.bench.load_profile import (
    SCENARIOS,
    Scenario,
    Stage,
    kinds,
    parse_mix,
    percentile,
    quantiles,
    schedule,
)
from streams.bench.load_report import (
    Landing,
    ProcMemory,
    Sent,
    memory_checks,
    recovered_after,
    state_entries,
    summarize,
)


def per_second(scenario: Scenario) -> Counter[int]:
    return Counter(int(t) for t in schedule(scenario))


@pytest.mark.parametrize(
    ("name", "rate", "seconds"),
    [("baseline", 500, 60), ("peak", 2000, 60), ("stress", 5000, 60), ("endurance", 1000, 600)],
)
def test_steady_scenarios_send_exactly_their_rate_every_second(
    name: str, rate: int, seconds: int
) -> None:
    scenario = SCENARIOS[name]
    counts = per_second(scenario)
    assert sorted(counts) == list(range(seconds))
    assert set(counts.values()) == {rate}
    assert scenario.requests == rate * seconds


def test_schedule_is_ascending_starts_at_zero_and_ends_before_the_end() -> None:
    offsets = list(schedule(SCENARIOS["spike"]))
    assert offsets[0] == 0
    assert all(a <= b for a, b in pairwise(offsets))
    assert offsets[-1] < SCENARIOS["spike"].seconds
    assert len(offsets) == SCENARIOS["spike"].requests


def test_spike_is_100_then_5000_then_100_per_second() -> None:
    counts = per_second(SCENARIOS["spike"])
    assert [counts[s] for s in range(20)] == [100] * 20
    assert [counts[s] for s in range(20, 40)] == [5000] * 20
    assert [counts[s] for s in range(40, 60)] == [100] * 20
    assert SCENARIOS["spike"].requests == 2000 + 100_000 + 2000


def test_scaled_keeps_rates_and_shape() -> None:
    short = SCENARIOS["spike"].scaled(6)
    assert short.seconds == pytest.approx(6)
    counts = per_second(short)
    assert [counts[s] for s in range(6)] == [100, 100, 5000, 5000, 100, 100]
    assert per_second(SCENARIOS["peak"].scaled(15)) == Counter(dict.fromkeys(range(15), 2000))


def test_fractional_stages_carry_over_without_losing_requests() -> None:
    scenario = Scenario("odd", (Stage(0.25, 10), Stage(0.25, 10), Stage(0.5, 3)))
    offsets = list(schedule(scenario))
    # 2.5 + 2.5 + 1.5 = 6.5 arrivals -> 7; the third stage's come 1/3 s apart
    assert len(offsets) == scenario.requests == 7
    assert offsets == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5 + 1 / 3])


def test_a_linear_ramp_has_the_integral_of_its_rate() -> None:
    ramp = Scenario("ramp", (Stage(10, 0, 1000),))  # 0 -> 1,000/s: 5,000 requests
    counts = per_second(ramp)
    assert ramp.requests == 5000
    assert sum(counts.values()) == 5000
    # second s holds the integral over [s, s+1] of 100 t: 100 s + 50
    assert [counts[s] for s in range(10)] == pytest.approx([100 * s + 50 for s in range(10)], abs=1)
    assert ramp.rate_at(5) == pytest.approx(500)
    down = Scenario("down", (Stage(4, 300, 100),))
    assert sum(per_second(down).values()) == down.requests == 800
    assert per_second(down)[0] > per_second(down)[3]


def test_a_stage_needs_a_positive_duration() -> None:
    with pytest.raises(ValueError, match="seconds > 0"):
        Stage(0, 100)
    with pytest.raises(ValueError, match="more than 0"):
        SCENARIOS["peak"].scaled(0)


def test_parse_mix_normalises_and_refuses_nonsense() -> None:
    assert parse_mix("verify=0.8,send=0.2") == pytest.approx({"verify": 0.8, "send": 0.2})
    assert parse_mix("verify=3, send=1") == pytest.approx({"verify": 0.75, "send": 0.25})
    assert parse_mix("send=1,verify=0") == {"send": 1.0}
    bad = {
        "verify": "KIND=WEIGHT",
        "track=1": "KIND=WEIGHT",
        "verify=x": "not a number",
        "verify=-1": ">= 0",
        "verify=inf": "finite",
        "verify=0": "at least one",
        "verify=1,verify=2": "twice",
    }
    for text, why in bad.items():
        with pytest.raises(ValueError, match=why):
            parse_mix(text)


def test_kinds_interleave_in_their_shares() -> None:
    picks = list(islice(kinds({"verify": 0.8, "send": 0.2}), 1000))
    assert Counter(picks) == {"verify": 800, "send": 200}
    # evenly spread: every window of 10 holds exactly 2 sends
    assert all(picks[i : i + 10].count("send") == 2 for i in range(0, 1000, 10))
    assert set(islice(kinds({"send": 1.0}), 5)) == {"send"}


def test_percentile_matches_percentile_cont() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0.5) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 1) == 4.0
    assert percentile(values, 0.95) == pytest.approx(3.85)
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_requests_that_never_landed_push_the_percentile_to_infinity() -> None:
    values = [0.1] * 98 + [math.inf] * 2
    q = quantiles(values)
    assert q is not None
    assert q.p50 == pytest.approx(100)
    assert math.isinf(q.p99)
    assert q.text().endswith("never")
    assert quantiles([]) is None


def _run(
    latencies: list[float | None], scenario: str = "peak", errors: int = 0, drain: Any = "drained"
) -> Any:
    """A synthetic run: request i sent at i ms, landed after latencies[i] s (None: never)."""
    start = 1_000_000.0
    sent, rows = [], {}
    for i, latency in enumerate(latencies):
        s = Sent("verify", i / 1000, sent_at=start + i / 1000, request_id=f"r{i}", response_s=0.01)
        sent.append(s)
        if latency is not None:
            rows[f"r{i}"] = Landing(s.sent_at + latency, "verifications")
    for _ in range(errors):
        sent.append(Sent("send", 0.5, sent_at=start + 0.5, error="http_503"))
    sc = SCENARIOS[scenario].scaled(1)
    return summarize(
        "http", sc, sent, [], rows, start=start, load_end=start + 1, drain=drain, backlog_peak=0
    )


def _passed(report: Any) -> dict[str, bool | None]:
    return {c.name: c.passed for c in report.checks}


def test_thresholds_pass_and_fail_on_the_right_side() -> None:
    fast = _run([0.1] * 1000)
    assert _passed(fast) == {
        "generator on schedule: lag p(99)<100ms": True,
        "request-to-row p(95)<500ms": True,
        "request-to-row p(99)<1s": True,
        "errors<1%": True,
        "request-to-row p(99)<250ms": True,
    }
    # 2% at 0.6 s: p95 still fast, p99 over the peak target, under 1 s
    mixed = _run([0.1] * 980 + [0.6] * 20)
    assert _passed(mixed)["request-to-row p(95)<500ms"] is True
    assert _passed(mixed)["request-to-row p(99)<250ms"] is False
    assert _passed(mixed)["request-to-row p(99)<1s"] is True
    slow = _run([0.7] * 1000)
    assert _passed(slow)["request-to-row p(95)<500ms"] is False


def test_a_late_generator_fails_the_harness_check() -> None:
    report = _run([0.1] * 100)
    for s in report.timeline:
        assert s["lag_p99_ms"] == 0
    late = [Sent("verify", i / 100, lag=0.2 if i >= 95 else 0.0, sent_at=i) for i in range(100)]
    sc = SCENARIOS["peak"].scaled(1)
    r = summarize("kafka", sc, late, [], {}, start=0, load_end=1, drain="lost", backlog_peak=0)
    checks = {c.name: c for c in r.checks}
    assert checks["generator on schedule: lag p(99)<100ms"].passed is False
    assert checks["generator on schedule: lag p(99)<100ms"].kind == "harness"


def test_dead_letters_end_requests_that_have_no_row() -> None:
    start = 0.0
    sent = [Sent("send", 0, sent_at=1.0, request_id=f"r{i}") for i in range(3)]
    rows = {"r0": Landing(1.2, "delivered")}
    sc = SCENARIOS["stress"].scaled(1)
    r = summarize(
        "http",
        sc,
        sent,
        [],
        rows,
        start=start,
        load_end=1,
        drain="lost",
        backlog_peak=0,
        dead={"deliver.unexpected": 1},
    )
    assert r.errors == {"dead_letter_deliver.unexpected": 1, "lost": 1}
    assert r.lost == 1


def test_errors_count_against_the_scheduled_requests() -> None:
    report = _run([0.1] * 990, errors=10)
    assert report.errors == {"http_503": 10}
    assert report.error_rate == pytest.approx(0.01)
    assert _passed(report)["errors<1%"] is False
    assert _passed(_run([0.1] * 991, errors=9))["errors<1%"] is True


def test_missing_rows_are_lost_once_drained_and_never_fast() -> None:
    report = _run([0.1] * 999 + [None], scenario="stress")
    assert report.lost == 1
    assert report.errors == {"lost": 1}
    assert math.isinf(report.row_ms.max)
    assert _passed(report)["nothing lost"] is False
    # timed out with work still queued: not lost (yet), but not a pass either
    pending = _run([0.1] * 999 + [None], scenario="stress", drain="timeout")
    assert pending.lost == 0
    assert pending.unlanded == 1
    assert _passed(pending)["nothing lost"] is None
    assert _passed(pending)["backlog drains"] is False


def test_failed_end_rows_are_errors_by_kind() -> None:
    start = 0.0
    sent = [
        Sent("send", 0, sent_at=1.0, request_id="a"),
        Sent("send", 0, sent_at=1, request_id="b"),
    ]
    rows = {"a": Landing(1.2, "delivered"), "b": Landing(1.3, "bounced")}
    sc = SCENARIOS["baseline"].scaled(1)
    r = summarize(
        "kafka", sc, sent, [], rows, start=start, load_end=1, drain="drained", backlog_peak=None
    )
    assert r.errors == {"row_bounced": 1}
    assert r.landed == 2
    assert r.drain_s == pytest.approx(0.3)


def test_recovery_is_the_start_of_the_final_run_of_fast_probes() -> None:
    probes = [(0.0, 900.0), (0.5, 100.0), (1.0, 800.0), (1.5, 200.0), (2.0, 50.0)]
    assert recovered_after(probes, 250) == 1.5
    assert recovered_after([(0.0, 100.0), (0.5, 100.0)], 250) == 0.0
    assert recovered_after([(0.0, 100.0), (0.5, math.inf)], 250) is None
    assert recovered_after([], 250) is None


def test_memory_checks_peak_and_growth_after_the_first_minute() -> None:
    flat = ProcMemory("worker", 1, True, [(t, 200_000) for t in range(0, 600, 10)], 210_000)
    growing = ProcMemory("sinks", 2, True, [(t, 100_000 + 100 * t) for t in range(0, 600, 10)])
    kafka = ProcMemory("kafka", 3, False, [(0, 900_000)], 900_000)
    checks = {c.name: c for c in memory_checks([flat, growing, kafka], 600)}
    assert checks["peak RSS < 400 MB (VmHWM)"].passed is True  # kafka is not ours
    growth = checks["no growth after 1 min (< 10%)"]
    assert growth.passed is False
    assert "sinks" in growth.value
    big = ProcMemory("worker", 1, True, [(0, 300_000)], 410 * 1024)
    assert memory_checks([big], 30)[0].passed is False
    assert memory_checks([big], 30)[1].passed is None  # too short to tell


def test_rss_at_is_none_before_the_run_got_that_far() -> None:
    p = ProcMemory("api", 1, True, [(0.0, 10), (30.0, 20)])
    assert p.rss_at(0) == 10
    assert p.rss_at(1) == 20
    assert p.rss_at(60) is None


def test_state_entries_reads_the_gauge_by_store() -> None:
    text = (
        "# HELP postwire_state_entries Entries per state store\n"
        "# TYPE postwire_state_entries gauge\n"
        'postwire_state_entries{store="dedup"} 1200.0\n'
        'postwire_state_entries{store="windows"} 34.0\n'
        "# TYPE postwire_other_total counter\n"
        "postwire_other_total 5.0\n"
    )
    assert state_entries(text) == {"dedup": 1200.0, "windows": 34.0}
    assert state_entries("# TYPE x gauge\nx 1\n") == {}


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def test_blackhole_answers_a_pipelined_session_and_counts_messages() -> None:
    SmtpBlackhole.accepted = 0
    proto = SmtpBlackhole()
    transport = FakeTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    assert transport.written.startswith(b"220 ")
    proto.data_received(b"EHLO me\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    # the body arrives in pieces, the terminator split across them
    proto.data_received(b"Subject: x\r\n\r\n..leading dot\r\nbody\r\n")
    proto.data_received(b".")
    proto.data_received(b"\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n.\r\nQUIT\r\n")
    replies = transport.written.split(b"\r\n")
    codes = [line[:3] for line in replies if line and line[3:4] == b" "]
    # EHLO's reply is multi-line: only its last line has a space after the code
    assert codes == b"220 250 250 250 354 250 250 250 354 250 221".split()
    assert SmtpBlackhole.accepted == 2
    assert transport.closed


def test_the_report_renders_and_serialises_without_infinities() -> None:
    import io
    import json

    from rich.console import Console

    from streams.bench.load import LoadResult
    from streams.bench.load_render import render, to_json

    report = _run([0.1] * 999 + [None], scenario="stress")
    procs = [ProcMemory("worker", 1, True, [(0.0, 100_000), (61.0, 120_000)], 130_000, 2.5)]
    result = LoadResult(
        options={
            "scenario": "stress",
            "profile": report.profile,
            "mix": {"verify": 0.8, "send": 0.2},
            "workers": 1,
            "partitions": 4,
            "tenants": 4,
            "max_in_flight": 10_000,
            "connections": 1000,
            "generator_nice": -5,
            "sink": "blackhole",
        },
        doors=[report],
        memory={"http": procs},
        memory_checks={"http": memory_checks(procs, report.seconds)},
        backlog_start={"http": 0},
        state={"worker": {}, "bulk": None},
        tables={"verifications": (1000, 2 * 1024 * 1024)},
        notes=["a note"],
    )
    buffer = io.StringIO()
    render(result, Console(file=buffer, width=140))
    text = buffer.getvalue()
    assert "nothing lost" in text
    assert "1 lost" in text
    assert "n/a (gauge absent)" in text
    assert "n/a (/metrics not reachable)" in text
    assert "note: a note" in text
    figures = json.loads(json.dumps(to_json(result), allow_nan=False))
    assert figures["doors"][0]["row_ms"]["max"] is None  # never landed: no Infinity in JSON
    assert figures["end_rows"]["send"] == "events row of type delivered"
