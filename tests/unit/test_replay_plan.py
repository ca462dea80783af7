from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from streams.cli.main import app
from streams.errors import NotReplayableError, TimeFormatError, TimeRangeError, UnknownTopicError
from streams.kafka.config import TopicNames
from streams.replay.plan import (
    PartitionRange,
    RangeTracker,
    parse_time,
    plan_ranges,
    replay_group,
    resolve_topic,
    stage_input,
    time_window,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-15m", NOW - timedelta(minutes=15)),
        ("-2h", NOW - timedelta(hours=2)),
        ("-1d", NOW - timedelta(days=1)),
        ("-30s", NOW - timedelta(seconds=30)),
        ("-1w", NOW - timedelta(weeks=1)),
        ("now", NOW),
        ("2026-02-28T10:00:00", datetime(2026, 2, 28, 10, tzinfo=UTC)),  # naive: UTC
        ("2026-02-28", datetime(2026, 2, 28, tzinfo=UTC)),
        ("2026-02-28T10:00:00Z", datetime(2026, 2, 28, 10, tzinfo=UTC)),
        ("2026-02-28T12:00:00+02:00", datetime(2026, 2, 28, 10, tzinfo=UTC)),
    ],
)
def test_times(text: str, expected: datetime) -> None:
    parsed = parse_time(text, NOW)
    assert parsed == expected
    assert parsed.tzinfo is not None
    assert parsed.utcoffset() == timedelta(0)


def test_an_offset_is_converted_to_utc() -> None:
    parsed = parse_time("2026-02-28T12:00:00-05:00", NOW)
    assert parsed.tzinfo == UTC
    assert parsed == datetime(2026, 2, 28, 17, tzinfo=UTC)


@pytest.mark.parametrize("text", ["15m", "-15", "-1y", "yesterday", "2026-13-01", "-1.5h", ""])
def test_unreadable_times_name_the_option_and_the_forms(text: str) -> None:
    with pytest.raises(TimeFormatError, match=r"^--to .* is not ISO 8601 .* or relative"):
        parse_time(text, NOW, "--to")


def test_window_defaults_to_now_and_clamps_the_future() -> None:
    assert time_window("-1h", None, NOW) == (NOW - timedelta(hours=1), NOW)
    assert time_window("-1h", "2030-01-01", NOW) == (NOW - timedelta(hours=1), NOW)
    assert time_window("-2h", "-1h", NOW) == (NOW - timedelta(hours=2), NOW - timedelta(hours=1))


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("-1h", "-2h", "--from (2026-03-01 11:00:00 UTC) must be before --to (2026-03-01 10:00:00"),
        ("-1h", "-1h", "must be before --to (2026-03-01 11:00:00 UTC)"),
        ("2030-01-01", None, "--from (2030-01-01 00:00:00 UTC) must be before now"),
        ("2030-01-01", "2031-01-01", "must be before now"),
    ],
)
def test_an_empty_or_backwards_window_is_refused(start: str, end: str | None, message: str) -> None:
    with pytest.raises(TimeRangeError) as refused:
        time_window(start, end, NOW)
    assert message in str(refused.value)


def test_ranges_from_the_time_index() -> None:
    ranges = plan_ranges(
        first={0: 10, 1: None, 2: 0, 3: 5},
        after={0: 25, 1: None, 2: None, 3: 5},
        high={0: 40, 1: 7, 2: 12, 3: 9},
    )
    assert ranges == [
        PartitionRange(0, 10, 25),  # both ends inside the partition
        PartitionRange(1, 7, 7),  # nothing stamped after --from: empty
        PartitionRange(2, 0, 12),  # nothing after --to yet: up to the end offset now
        PartitionRange(3, 5, 5),  # nothing between --from and --to
    ]
    assert [r.count for r in ranges] == [15, 0, 12, 0]


def test_ranges_never_pass_the_end_offsets_taken_at_the_start() -> None:
    # a producer may have written after end_offsets was read: the range stays at ``high``
    assert plan_ranges({0: 3}, {0: 50}, {0: 20}) == [PartitionRange(0, 3, 20)]
    assert plan_ranges({0: 30}, {0: None}, {0: 20}) == [PartitionRange(0, 20, 20)]


def test_tracker_counts_offsets_and_finishes_over_gaps() -> None:
    tracker = RangeTracker([PartitionRange(0, 10, 20), PartitionRange(1, 0, 5)])
    assert tracker.total == 15
    assert tracker.wanted(0, 10)
    assert not tracker.wanted(0, 20)
    assert not tracker.wanted(0, 9)
    assert not tracker.wanted(7, 0)
    tracker.advance(0, 15)
    tracker.advance(0, 12)  # positions never go back
    assert tracker.done == 5
    assert tracker.pending == [0, 1]
    tracker.advance(0, 31)  # past the end (records beyond it were fetched): clamped
    tracker.advance(1, 5)
    assert tracker.done == 15
    assert tracker.pending == []
    assert tracker.finished(0)


def test_stages_that_may_and_may_not_be_replayed() -> None:
    topics = TopicNames("pw")
    assert stage_input("verify", topics) == "pw.verify"
    with pytest.raises(NotReplayableError, match=r"ledger .* would send that mail again"):
        stage_input("deliver", topics)
    with pytest.raises(NotReplayableError, match=r"^deliver\.bulk cannot be replayed"):
        stage_input("deliver.bulk", topics)
    with pytest.raises(NotReplayableError, match=r"^the gate cannot be replayed: .* empty dedup"):
        stage_input("gate", topics)
    with pytest.raises(
        NotReplayableError, match="unknown stage 'sink'; the stages are verify, gate"
    ):
        stage_input("sink", topics)


def test_a_replay_group_is_never_the_live_one() -> None:
    assert replay_group("postwire", "verify", NOW) == "postwire-replay-verify-1772366400"


def test_topics_resolve_with_or_without_the_prefix() -> None:
    existing = ["pw.accepted", "pw.events", "other"]
    assert resolve_topic("pw.events", "pw", existing) == "pw.events"
    assert resolve_topic("accepted", "pw", existing) == "pw.accepted"
    assert resolve_topic("other", "pw", existing) == "other"
    with pytest.raises(
        UnknownTopicError, match="no topic 'nope'; pw's topics are accepted, events"
    ):
        resolve_topic("nope", "pw", existing)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "-1h"], "give exactly one of --into-sinks and --stage NAME"),
        (
            ["--from", "-1h", "--into-sinks", "--stage", "verify"],
            "give exactly one of --into-sinks and --stage NAME",
        ),
        (["--from", "-1h", "--into-sinks"], "--into-sinks needs --topic"),
        (["--from", "soon", "--into-sinks", "--topic", "events"], "--from 'soon' is not ISO 8601"),
        (["--from", "-1h", "--to", "-2h", "--into-sinks", "--topic", "events"], "must be before"),
        (["--from", "-1h", "--stage", "deliver"], "deliver cannot be replayed"),
        (["--from", "-1h", "--stage", "gate"], "the gate cannot be replayed"),
        (["--from", "-1h", "--stage", "verify", "--topic", "events"], "reads postwire.verify"),
    ],
)
def test_cli_usage_errors_exit_2_before_any_io(args: list[str], message: str) -> None:
    # nothing is running: every one of these must be caught before Kafka or PostgreSQL is needed
    result = CliRunner().invoke(app, ["replay", *args], env={"POSTWIRE_TOPIC_PREFIX": "postwire"})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert message in " ".join(result.stderr.split()), result.stderr
