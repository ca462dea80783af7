"""The commit budget: how much a stage has processed and not committed, and when that is too
much (the runner then stops fetching until the commits catch up)."""

from __future__ import annotations

from streams.runtime.cadence import CommitBudget


def test_records_count_until_their_checkpoint_is_committed() -> None:
    budget = CommitBudget(max_records=1000, max_seconds=5.0, now=0.0)
    budget.processed(400, now=1.0)
    budget.processed(300, now=1.2)
    first = budget.seal()
    budget.processed(200, now=1.6)
    second = budget.seal()
    assert (first.records, second.records, budget.records) == (700, 200, 900)
    assert budget.age(now=2.0) == 1.0  # the oldest uncommitted record, not the last commit
    assert not budget.exceeded(now=2.0)
    budget.committed(first, now=2.5)
    assert (budget.records, budget.last_commit) == (200, 2.5)
    assert abs(budget.age(now=3.0) - 1.4) < 1e-9
    budget.committed(second, now=3.0)
    assert (budget.records, budget.age(now=9.0)) == (0, 0.0)


def test_too_many_records_or_too_old_a_record_exceeds_the_budget() -> None:
    budget = CommitBudget(max_records=1000, max_seconds=5.0, now=0.0)
    assert not budget.exceeded(now=100.0)  # nothing uncommitted is never over
    budget.processed(999, now=1.0)
    assert not budget.exceeded(now=1.0)
    budget.processed(1, now=1.1)
    assert budget.exceeded(now=1.1)  # by count, sealed or not
    group = budget.seal()
    budget.committed(group, now=1.5)
    budget.processed(10, now=2.0)
    budget.seal()  # sent, and Kafka has not acknowledged it for 5 s
    assert not budget.exceeded(now=6.9)
    assert budget.exceeded(now=7.0)


def test_an_empty_checkpoint_moves_only_the_commit_time() -> None:
    budget = CommitBudget(max_records=10, max_seconds=1.0, now=0.0)
    empty = budget.seal()
    budget.processed(3, now=1.0)
    budget.committed(empty, now=1.5)  # a checkpoint of held offsets only
    assert (budget.records, budget.last_commit) == (3, 1.5)
