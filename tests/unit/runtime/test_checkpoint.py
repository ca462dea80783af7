"""When a table kept on disk goes on from its mark, and when it is rebuilt from the start."""

from __future__ import annotations

import pytest

from streams.kafka.topics import CHANGELOG_CONFIG
from streams.runtime.checkpoint import TOMBSTONE_MARGIN, Mark, resume_from

HOUR = 3600.0
MARK = Mark("app-gate-changelog", 1, 99, "cluster-1", 10_000.0, 12)


def resume(mark: Mark | None = MARK, **over: object) -> int | None:
    facts: dict[str, object] = {
        "topic": "app-gate-changelog",
        "partition": 1,
        "cluster": "cluster-1",
        "start": 0,
        "end": 150,
        "now": 10_060.0,
        "tombstone_horizon": 4 * HOUR,
    }
    facts.update(over)
    return resume_from(mark, **facts).offset  # type: ignore[arg-type]


def test_a_trusted_mark_resumes_right_after_it() -> None:
    assert resume() == 100
    assert resume(end=100) == 100  # nothing written since: nothing to read
    assert resume(start=100) == 100  # everything up to the mark was removed: still whole
    assert Mark.from_json(MARK.to_json()) == MARK


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"end": 99}, "the changelog ends before the mark (recreated, or another log)"),
        ({"end": 0}, "an empty changelog"),
        ({"start": 101}, "retention removed records the table never saw"),
        ({"cluster": "cluster-2"}, "a new Kafka cluster (data dir)"),
        ({"cluster": None}, "the cluster id is unknown"),
        ({"partition": 0}, "another partition's table"),
        ({"topic": "other-gate-changelog"}, "another app's changelog"),
        ({"tombstone_horizon": None}, "delete.retention.ms unknown"),
        ({"now": 10_000.0 + 4 * HOUR - TOMBSTONE_MARGIN + 1}, "tombstones may be gone"),
    ],
)
def test_an_untrusted_mark_rebuilds_from_the_start(over: dict[str, object], why: str) -> None:
    assert resume(**over) is None, why


def test_no_mark_rebuilds_from_the_start() -> None:
    assert resume(None) is None


def test_a_mark_outlives_the_time_a_changelog_takes_to_compact() -> None:
    """A worker down for less than the tombstone horizon resumes from its mark; the
    changelog's tail is compacted well within it."""
    horizon = int(CHANGELOG_CONFIG["delete.retention.ms"]) / 1000
    rolled = int(CHANGELOG_CONFIG["segment.ms"]) / 1000
    compacted = int(CHANGELOG_CONFIG["max.compaction.lag.ms"]) / 1000
    assert CHANGELOG_CONFIG["cleanup.policy"] == "compact"
    assert rolled <= compacted < horizon - TOMBSTONE_MARGIN
    assert resume(now=MARK.written + compacted, tombstone_horizon=horizon) == 100
