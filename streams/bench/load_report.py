"""What `postwire bench load` reports, computed from what was sent and which rows landed: pure,
so every figure and every pass/fail line can be checked without a stack.

A request's path ends at one row: a verify request at its ``verifications`` row, a send at its
``delivered`` event (or a ``bounced``/``failed``/``dropped``/``throttled`` one, which ends it as
an error). Request-to-row latency is that row's ``landed_at`` minus the moment the generator sent
the request (same host, same clock), so it includes the HTTP exchange and every queue on the way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from prometheus_client.parser import text_string_to_metric_families

from streams.bench.load_profile import Quantiles, Scenario, quantiles

__all__ = [
    "END_ROWS",
    "Check",
    "DoorReport",
    "Drain",
    "Landing",
    "ProcMemory",
    "Sent",
    "memory_checks",
    "recovered_after",
    "state_entries",
    "summarize",
]

END_ROWS: Final = {"verify": "verifications row", "send": "events row of type delivered"}
RECOVERY_MS: Final = 250.0
RECOVERY_WITHIN_S: Final = 30.0
LAST_SECONDS: Final = 5.0
LAG_LIMIT_MS: Final = 100.0  # later than this and the offered load was not the scheduled one
RSS_LIMIT_KB: Final = 400 * 1024
GROWTH_LIMIT: Final = 0.10  # RSS may grow 10% from the first minute's sample to the end
Drain = Literal["drained", "lost", "timeout"]


@dataclass(slots=True)
class Sent:
    """One request: when it was due, when it went out, how it was answered."""

    kind: str
    due: float  # scheduled offset, seconds from the start of the load
    lag: float = 0.0  # how late it went out, seconds
    sent_at: float = 0.0  # wall clock (UNIX seconds) when it went out
    request_id: str | None = None
    response_s: float | None = None  # until the HTTP 200/202, or Kafka's ack
    error: str | None = None  # the error kind; None: acknowledged


@dataclass(frozen=True, slots=True)
class Landing:
    at: float  # UNIX seconds: the end row's landed_at
    end: str  # "verifications", "delivered", or the event type that ended it otherwise

    @property
    def ok(self) -> bool:
        return self.end in ("verifications", "delivered")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool | None  # None: could not be decided (says why in ``value``)
    value: str
    # harness: whether the run measured what it says (the generator kept its schedule)
    kind: Literal["threshold", "target", "harness"] = "threshold"


@dataclass
class DoorReport:
    door: str
    scenario: str
    profile: str
    seconds: float
    scheduled: int
    sent: int  # went out (not refused by the generator's in-flight cap)
    acknowledged: int
    landed: int  # acknowledged requests whose end row landed (as success or failure)
    lost: int  # acknowledged, no end row, and the pipeline had nothing left to process
    unlanded: int  # acknowledged, no end row when the drain timed out with work still queued
    errors: dict[str, int]
    error_rate: float
    target_rate: float
    send_rate: float
    ack_rate: float
    row_rate: float
    lag_ms: Quantiles | None
    response_ms: dict[str, Quantiles]
    row_ms: Quantiles | None  # every acknowledged request; ``inf`` for those that never landed
    row_ms_by_kind: dict[str, Quantiles]
    last_seconds_ms: Quantiles | None  # requests sent in the last LAST_SECONDS of the load
    drain: Drain
    drain_s: float | None  # load end -> last end row (None: did not drain)
    backlog_peak: int | None
    probes: int
    probes_failed: int
    probe_ms: Quantiles | None
    recovered_after_s: float | None
    checks: list[Check] = field(default_factory=list)
    timeline: list[dict[str, float]] = field(default_factory=list)


def recovered_after(probes: Sequence[tuple[float, float]], limit_ms: float) -> float | None:
    """Seconds after the load ended from which every probe was faster than ``limit_ms``: the
    send offset of the first probe of the final run of fast ones. ``probes`` is
    (sent seconds after the load ended, latency ms or inf); None when the last one was slow."""
    ordered = sorted(probes)
    if not ordered or not ordered[-1][1] < limit_ms:
        return None
    first = len(ordered) - 1
    while first > 0 and ordered[first - 1][1] < limit_ms:
        first -= 1
    return max(ordered[first][0], 0.0)


def _latencies(sent: Iterable[Sent], rows: Mapping[str, Landing]) -> list[float]:
    out = []
    for s in sent:
        landing = rows.get(s.request_id or "")
        out.append(landing.at - s.sent_at if landing is not None else math.inf)
    return out


def _timeline(
    sent: Sequence[Sent], rows: Mapping[str, Landing], start: float
) -> list[dict[str, float]]:
    seconds: dict[int, list[Sent]] = {}
    for s in sent:
        seconds.setdefault(int(s.due), []).append(s)
    landed: dict[int, int] = {}
    for landing in rows.values():
        second = int(landing.at - start)
        landed[second] = landed.get(second, 0) + 1
    out: list[dict[str, float]] = []
    for second in range(max([*seconds, *landed], default=-1) + 1):
        group = seconds.get(second, [])
        acked = [s for s in group if s.error is None]
        q = quantiles(_latencies(acked, rows))
        lag = quantiles([s.lag for s in group if s.error != "client_overload"])
        out.append(
            {
                "second": second,
                "sent": len(group),
                "errors": len(group) - len(acked),
                "landed": landed.get(second, 0),
                "lag_p99_ms": lag.p99 if lag else math.nan,
                "row_p99_ms": q.p99 if q else math.nan,
            }
        )
    return out


def summarize(  # noqa: PLR0913 - one door's run: schedule, sends, probes, rows, drain
    door: str,
    scenario: Scenario,
    sent: Sequence[Sent],
    probes: Sequence[Sent],
    rows: Mapping[str, Landing],
    *,
    start: float,
    load_end: float,
    drain: Drain,
    backlog_peak: int | None,
    dead: Mapping[str, int] | None = None,
) -> DoorReport:
    """The report of one door's run. ``start``/``load_end``: wall clock of the schedule's offset
    0 and of the moment the last request had been sent; ``dead``: dead letters by code."""
    acked = [s for s in sent if s.error is None]
    errors: dict[str, int] = {}
    for s in sent:
        if s.error is not None:
            errors[s.error] = errors.get(s.error, 0) + 1
    missing = 0
    for s in acked:
        landing = rows.get(s.request_id or "")
        if landing is None:
            missing += 1
        elif not landing.ok:
            errors[f"row_{landing.end}"] = errors.get(f"row_{landing.end}", 0) + 1
    # a dead letter names no request id, but it is the end of one of the missing requests
    for code, n in (dead or {}).items():
        errors[f"dead_letter_{code}"] = n
    missing = max(missing - sum((dead or {}).values()), 0)
    lost = missing if drain != "timeout" else 0
    if lost:
        errors["lost"] = lost
    went = [s for s in sent if s.error != "client_overload"]
    span = max(scenario.seconds, max((s.sent_at for s in went), default=start) - start)
    acks = [s.sent_at + (s.response_s or 0.0) for s in acked]
    ack_span = max(scenario.seconds, max(acks, default=start) - start)
    mine = [r for s in acked if (r := rows.get(s.request_id or "")) is not None]
    last_row = max((r.at for r in mine), default=None)
    response: dict[str, list[float]] = {}
    for s in acked:
        response.setdefault(s.kind, []).append(s.response_s or 0.0)
    by_kind: dict[str, list[Sent]] = {}
    for s in acked:
        by_kind.setdefault(s.kind, []).append(s)
    tail = [s for s in acked if s.due >= scenario.seconds - LAST_SECONDS]
    fast = [(p.sent_at - load_end, lat * 1000) for p, lat in _probe_pairs(probes, rows)]
    n_errors = sum(errors.values())
    report = DoorReport(
        door=door,
        scenario=scenario.name,
        profile=scenario.describe(),
        seconds=scenario.seconds,
        scheduled=len(sent),
        sent=len(went),
        acknowledged=len(acked),
        landed=len(mine),
        lost=lost,
        unlanded=missing - lost,
        errors=dict(sorted(errors.items())),
        error_rate=n_errors / len(sent) if sent else 0.0,
        target_rate=scenario.mean_rate,
        send_rate=len(went) / span,
        ack_rate=len(acked) / ack_span,
        row_rate=len(mine) / (last_row - start) if last_row and last_row > start else 0.0,
        lag_ms=quantiles([s.lag for s in went]),
        response_ms={k: q for k, v in response.items() if (q := quantiles(v)) is not None},
        row_ms=quantiles(_latencies(acked, rows)),
        row_ms_by_kind={
            k: q for k, v in by_kind.items() if (q := quantiles(_latencies(v, rows))) is not None
        },
        last_seconds_ms=quantiles(_latencies(tail, rows)),
        drain=drain,
        drain_s=max(last_row - load_end, 0.0) if last_row and drain == "drained" else None,
        backlog_peak=backlog_peak,
        probes=len(probes),
        probes_failed=sum(1 for p in probes if p.error is not None),
        probe_ms=quantiles([lat for _, lat in _probe_pairs(probes, rows)]),
        recovered_after_s=recovered_after(fast, RECOVERY_MS),
        timeline=_timeline(sent, rows, start),
    )
    report.checks = door_checks(report)
    return report


def _probe_pairs(probes: Sequence[Sent], rows: Mapping[str, Landing]) -> list[tuple[Sent, float]]:
    acked = [p for p in probes if p.error is None]
    return list(zip(acked, _latencies(acked, rows), strict=True))


def _ms(value: float) -> str:
    return "never (some rows did not land)" if math.isinf(value) else f"{value:,.0f} ms"


def door_checks(r: DoorReport) -> list[Check]:
    """k6-style thresholds for every scenario, and the issue's targets for peak and stress."""
    if r.row_ms is None:
        none = "no request was acknowledged"
        return [Check(n, False, none) for n in ("p(95)<500ms", "p(99)<1s", "errors<1%")]
    checks = [
        Check(
            f"generator on schedule: lag p(99)<{LAG_LIMIT_MS:.0f}ms",
            r.lag_ms is not None and r.lag_ms.p99 < LAG_LIMIT_MS,
            "-" if r.lag_ms is None else _ms(r.lag_ms.p99),
            "harness",
        ),
        Check("request-to-row p(95)<500ms", r.row_ms.p95 < 500, _ms(r.row_ms.p95)),
        Check("request-to-row p(99)<1s", r.row_ms.p99 < 1000, _ms(r.row_ms.p99)),
        Check("errors<1%", r.error_rate < 0.01, f"{r.error_rate:.2%}"),
    ]
    if r.scenario == "peak":
        checks.append(
            Check("request-to-row p(99)<250ms", r.row_ms.p99 < 250, _ms(r.row_ms.p99), "target")
        )
    if r.scenario == "stress":
        if r.drain == "timeout":
            lost = Check("nothing lost", None, f"{r.unlanded:,} still queued at the timeout")
        else:
            lost = Check("nothing lost", r.lost == 0, f"{r.lost:,} lost")
        drained = "drained" if r.drain_s is None else f"drained in {r.drain_s:,.1f} s"
        checks += [
            Check(lost.name, lost.passed, lost.value, "target"),
            Check(
                "backlog drains", r.drain == "drained", drained if r.drain_s else r.drain, "target"
            ),
            Check(
                f"probes < {RECOVERY_MS:.0f} ms within {RECOVERY_WITHIN_S:.0f} s of the end",
                r.recovered_after_s is not None and r.recovered_after_s <= RECOVERY_WITHIN_S,
                "never" if r.recovered_after_s is None else f"after {r.recovered_after_s:.1f} s",
                "target",
            ),
        ]
    return checks


@dataclass
class ProcMemory:
    """One process of the stack: VmRSS samples during a run and VmHWM (its lifetime peak)."""

    name: str
    pid: int
    postwire: bool  # one of ours (worker, bulk, sinks, api), not a server or the generator
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, VmRSS kB)
    hwm_kb: int | None = None
    cpu_s: float | None = None  # CPU seconds used during the run (user + system)

    def rss_at(self, t: float) -> int | None:
        """The first sample at or after ``t`` seconds; None if the run was shorter."""
        for when, kb in self.samples:
            if when >= t:
                return kb
        return None

    @property
    def end_kb(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    @property
    def max_kb(self) -> int | None:
        return max((kb for _, kb in self.samples), default=None)


def memory_checks(procs: Sequence[ProcMemory], seconds: float) -> list[Check]:
    """Endurance targets: no postwire process past 400 MB (VmHWM), and none still growing after
    the first minute (end RSS within 10% of the 1-minute sample; decided only for runs of at
    least two minutes)."""
    ours = [p for p in procs if p.postwire and p.samples]
    if not ours:
        return [Check("peak RSS < 400 MB", None, "no samples", "target")]
    peak = max(ours, key=lambda p: p.hwm_kb or p.max_kb or 0)
    peak_kb = peak.hwm_kb or peak.max_kb or 0
    checks = [
        Check(
            "peak RSS < 400 MB (VmHWM)",
            peak_kb < RSS_LIMIT_KB,
            f"{peak.name} {peak_kb / 1024:,.0f} MB",
            "target",
        )
    ]
    if seconds < 120:
        checks.append(Check("no growth after 1 min", None, "run shorter than 2 min", "target"))
        return checks
    growth = []
    for p in ours:
        first, end = p.rss_at(60.0), p.end_kb
        if first and end:
            growth.append(((end - first) / first, p.name, end - first))
    worst = max(growth, default=(0.0, "-", 0))
    checks.append(
        Check(
            "no growth after 1 min (< 10%)",
            worst[0] < GROWTH_LIMIT,
            f"{worst[1]} {worst[2] / 1024:+,.0f} MB ({worst[0]:+.0%})",
            "target",
        )
    )
    return checks


def state_entries(metrics_text: str, name: str = "postwire_state_entries") -> dict[str, float]:
    """The ``store`` -> value of a Prometheus gauge in a /metrics page; {} when it is absent."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            store = sample.labels.get("store", "")
            found[store] = found.get(store, 0.0) + sample.value
    return found
