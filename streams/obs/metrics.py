"""Every Prometheus metric postwire exports, defined here and nowhere else.

Each process (worker, bulk worker, sinks, ingress) registers these in its own default registry
and serves it on its own ``/metrics``; Prometheus adds the ``instance`` label and sums.

Label rule: a label value must come from a small set the code fixes (stage names, outcome names,
schema enums, table names, route patterns), never from the data. No addresses, message ids,
request ids or domains: each would make a series per recipient. Not tenants either: tenants grow
with the customer list, not with the code, and per-tenant figures already live in PostgreSQL
(`requests`, `messages`, `events`), where they can be queried without a cardinality budget.
"""

from __future__ import annotations

import time
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "ALL",
    "BATCH_RECORDS",
    "CONSUMER_LAG",
    "END_TO_END",
    "HTTP_REQUESTS",
    "HTTP_SECONDS",
    "RECORDS",
    "SHAPING_ACTIONS",
    "SHAPING_SITES",
    "SINCE_COMMIT",
    "SINK_BATCH_ROWS",
    "SINK_FLUSH_SECONDS",
    "SINK_WRITE_FAILURES",
    "SMTP_RESULTS",
    "STAGE_SECONDS",
    "STATE_ENTRIES",
    "UNCOMMITTED",
    "WEBHOOK_POSTS",
    "WEBHOOK_POST_SECONDS",
    "WEBHOOK_RETRY_BACKLOG",
    "EndToEnd",
    "StageMeter",
    "shaping_fired",
    "shaping_sites",
    "smtp_result",
]

# per-record work in a stage: microseconds for a gate decision, seconds for an SMTP session
_STAGE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip
# request to result: the 250 ms target sits on a bucket edge; retried mail takes hours or days
_E2E_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
    4 * 3600.0, 86400.0, 5 * 86400.0,
)  # fmt: skip
_ROWS_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
_FLUSH_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RECORDS = Counter(
    "postwire_records_total",
    "Records a stage finished, by what became of them (admitted, duplicate, safe, delivered...).",
    ["stage", "outcome"],
)
STAGE_SECONDS = Histogram(
    "postwire_stage_seconds",
    "Time a stage spent on one record, from taking it to handing its results to the producer "
    "(batch stages: one observation per batch, its time divided by its records).",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
BATCH_RECORDS = Histogram(
    "postwire_stage_batch_records",
    "Records in one batch a stage of the batch runtime took at once.",
    ["stage"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
STATE_ENTRIES = Gauge(
    "postwire_state_entries",
    "Entries in a state store of this worker (all its partitions), after the last batch.",
    ["store"],
)
UNCOMMITTED = Gauge(
    "postwire_stage_uncommitted_records",
    "Records a batch stage processed whose offsets are not committed yet (what a crash would "
    "repeat); bounded by POSTWIRE_MAX_UNCOMMITTED_RECORDS.",
    ["stage"],
)
SINCE_COMMIT = Gauge(
    "postwire_stage_seconds_since_commit",
    "Seconds since a batch stage last committed, while it has uncommitted records (0 when it "
    "has none).",
    ["stage"],
)
END_TO_END = Histogram(
    "postwire_end_to_end_seconds",
    "From the request's created_at to: its verification result (verified), the receiver's 250 "
    "(delivered), its row committed in PostgreSQL (row.requests, row.verifications).",
    ["kind"],
    buckets=_E2E_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "postwire_consumer_lag",
    "Records not yet committed by a consumer group, summed over the topic's partitions.",
    ["group", "topic"],
)
SINK_BATCH_ROWS = Histogram(
    "postwire_sink_batch_rows",
    "Rows in one sink batch (one transaction), rejections included.",
    ["table"],
    buckets=_ROWS_BUCKETS,
)
SINK_FLUSH_SECONDS = Histogram(
    "postwire_sink_flush_seconds",
    "Time to write one sink batch in one PostgreSQL transaction (the attempt that succeeded).",
    ["table"],
    buckets=_FLUSH_BUCKETS,
)
SINK_WRITE_FAILURES = Counter(
    "postwire_sink_write_failures_total",
    "Batch writes that failed because PostgreSQL was unavailable (the batch is retried).",
    ["table"],
)
SMTP_RESULTS = Counter(
    "postwire_smtp_results_total",
    "SMTP delivery attempts by result (delivered, deferred, bounced) and class (bounce or "
    "deferral category, none when delivered).",
    ["result", "class"],
)
SHAPING_ACTIONS = Counter(
    "postwire_shaping_actions_total",
    "Shaping rules that fired in this process, by rule name (from the shaping file) and action "
    "(suspend, slow).",
    ["rule", "action"],
)
SHAPING_SITES = Gauge(
    "postwire_shaping_sites",
    "Destination sites this process holds suspended or slowed (every delivery process knows "
    "every site's state: take the max over instances, not the sum).",
    ["state"],
)
HTTP_REQUESTS = Counter(
    "postwire_http_requests_total",
    "HTTP requests served, by route pattern (never the raw path), method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "postwire_http_request_seconds",
    "Time to answer one HTTP request, by route pattern.",
    ["route"],
    buckets=_HTTP_BUCKETS,
)

WEBHOOK_POSTS = Counter(
    "postwire_webhook_posts_total",
    "Event webhook posts by outcome: accepted (2xx), rejected (another status), timeout, "
    "refused (no connection); busy and paused batches (the endpoint's concurrency full, its "
    "breaker open) were not posted and wait in a delay tier.",
    ["outcome"],
)
WEBHOOK_POST_SECONDS = Histogram(
    "postwire_webhook_post_seconds",
    "Time from sending an event webhook post to its answer (or its failure).",
    buckets=_HTTP_BUCKETS,
)
WEBHOOK_RETRY_BACKLOG = Gauge(
    "postwire_webhook_retry_backlog",
    "Webhook batches this process handed to a delay tier minus those it took back out (the "
    "consumer lag of the webhook.delay groups says the same across processes).",
)

ALL: tuple[MetricWrapperBase, ...] = (
    RECORDS,
    STAGE_SECONDS,
    BATCH_RECORDS,
    STATE_ENTRIES,
    UNCOMMITTED,
    SINCE_COMMIT,
    END_TO_END,
    CONSUMER_LAG,
    SINK_BATCH_ROWS,
    SINK_FLUSH_SECONDS,
    SINK_WRITE_FAILURES,
    SMTP_RESULTS,
    SHAPING_ACTIONS,
    SHAPING_SITES,
    HTTP_REQUESTS,
    HTTP_SECONDS,
    WEBHOOK_POSTS,
    WEBHOOK_POST_SECONDS,
    WEBHOOK_RETRY_BACKLOG,
)


class StageMeter:
    """Counts and times the records of one stage.

    ``labels()`` takes a lock and builds a key on every call (~1 us); the children are looked up
    once per outcome and kept, so a record costs one dict lookup, one ``inc`` and one
    ``observe``."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._seconds: Histogram | None = None  # made on first use: no empty series
        self._outcomes: dict[str, Counter] = {}

    def _counter(self, outcome: str) -> Counter:
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = RECORDS.labels(self.stage, outcome)
        return counter

    def done(self, outcome: str, started: float) -> None:
        """One record finished with ``outcome``; ``started`` is its ``time.perf_counter()``."""
        elapsed = time.perf_counter() - started
        if self._seconds is None:
            self._seconds = STAGE_SECONDS.labels(self.stage)
        self._seconds.observe(elapsed)
        self._counter(outcome).inc()

    def count(self, outcome: str, n: int = 1) -> None:
        """Records finished without a time of their own (a sink counts whole batches)."""
        if n:
            self._counter(outcome).inc(n)


class EndToEnd:
    """Request-to-result latency of one kind; clocks of different machines may disagree by a
    little, so a negative age counts as zero rather than vanishing."""

    def __init__(self, kind: str) -> None:
        self._child = END_TO_END.labels(kind)

    def since(self, created: datetime | None, now: datetime) -> None:
        if created is not None:
            self._child.observe(max((now - created).total_seconds(), 0.0))

    def since_epoch(self, created: float, now: float) -> None:
        self._child.observe(max(now - created, 0.0))


_SMTP_CHILDREN: dict[tuple[str, str], Counter] = {}


def smtp_result(result: str, category: str | None) -> None:
    """Count one SMTP attempt; ``category`` is the bounce or deferral class (None: delivered)."""
    key = (result, category or "none")
    counter = _SMTP_CHILDREN.get(key)
    if counter is None:
        counter = _SMTP_CHILDREN[key] = SMTP_RESULTS.labels(*key)
    counter.inc()


def shaping_fired(rule: str, action: str) -> None:
    SHAPING_ACTIONS.labels(rule, action).inc()


def shaping_sites(suspended: int, slowed: int) -> None:
    SHAPING_SITES.labels("suspended").set(suspended)
    SHAPING_SITES.labels("slowed").set(slowed)
