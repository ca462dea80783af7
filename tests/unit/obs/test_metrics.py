"""The metric registry: one place, our prefix, Prometheus naming, no personal data in labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from streams.obs import metrics
from streams.obs.metrics import ALL, EndToEnd, StageMeter, smtp_result

FORBIDDEN_LABEL_PARTS = ("address", "email", "recipient", "rcpt", "message", "request", "tenant")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_metric_is_prefixed_and_named_by_its_type() -> None:
    for metric in ALL:
        (family,) = metric.describe()
        assert family.name.startswith("postwire_"), family.name
        if family.type == "histogram":
            # base units: seconds, or a count of rows / records per batch
            assert family.name.endswith(("_seconds", "_rows", "_records")), family.name
    # each module-level metric is listed in ALL, so tests and the dashboard check see them
    defined = {v for v in vars(metrics).values() if isinstance(v, metrics.MetricWrapperBase)}
    assert defined == set(ALL)


def test_no_label_can_carry_personal_data() -> None:
    for metric in ALL:
        for label in metric._labelnames:
            assert not any(part in label.lower() for part in FORBIDDEN_LABEL_PARTS), (
                f"{metric._name} has label {label!r}"
            )


def test_stage_meter_counts_per_outcome_and_times_each_record() -> None:
    meter = StageMeter("unit-test-stage")
    before = sample("postwire_stage_seconds_count", stage="unit-test-stage")
    meter.done("admitted", 0.0)
    meter.done("admitted", 0.0)
    meter.done("rejected", 0.0)
    meter.count("written", 5)
    meter.count("written", 0)
    assert sample("postwire_records_total", stage="unit-test-stage", outcome="admitted") == 2
    assert sample("postwire_records_total", stage="unit-test-stage", outcome="rejected") == 1
    assert sample("postwire_records_total", stage="unit-test-stage", outcome="written") == 5
    assert sample("postwire_stage_seconds_count", stage="unit-test-stage") == before + 3


def test_a_meter_only_counting_exports_no_empty_latency_series() -> None:
    StageMeter("unit-test-counts-only").count("written", 3)
    assert (
        REGISTRY.get_sample_value(
            "postwire_stage_seconds_count", {"stage": "unit-test-counts-only"}
        )
        is None
    )


def test_end_to_end_counts_a_clock_skew_as_zero() -> None:
    e2e = EndToEnd("unit-test")
    now = datetime.now(UTC)
    e2e.since(now + timedelta(seconds=5), now)  # created "in the future" by a skewed clock
    e2e.since(now - timedelta(seconds=2), now)
    e2e.since(None, now)
    assert sample("postwire_end_to_end_seconds_count", kind="unit-test") == 2
    assert sample("postwire_end_to_end_seconds_sum", kind="unit-test") == 2.0


def test_smtp_results_by_result_and_class() -> None:
    before = sample("postwire_smtp_results_total", result="bounced", **{"class": "user_unknown"})
    smtp_result("bounced", "user_unknown")
    smtp_result("delivered", None)
    after = sample("postwire_smtp_results_total", result="bounced", **{"class": "user_unknown"})
    assert after == before + 1
    assert sample("postwire_smtp_results_total", result="delivered", **{"class": "none"}) >= 1
