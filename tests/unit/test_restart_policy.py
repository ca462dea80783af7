"""The supervisor's restart policy and the `ps` view, without a process."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from streams.settings import Settings
from streams.stack.process import ManagedProcess
from streams.stack.restart import (
    Exit,
    GiveUp,
    Restart,
    RestartPolicy,
    backoff,
    decide,
    describe_exit,
    failures_in_window,
)
from streams.stack.status import (
    ChildStatus,
    StackStatus,
    describe_state,
    read_status,
    status_rows,
    write_status,
)

POLICY = RestartPolicy(burst=5, interval=300.0, backoff_first=0.5, backoff_max=30.0)


def _quick_failures(count: int, *, start: float = 1000.0, uptime: float = 1.0) -> list[Exit]:
    exits, t = [], start
    for _ in range(count):
        exits.append(Exit(started_at=t, exited_at=t + uptime, returncode=1))
        t += uptime + 0.5
    return exits


def test_the_first_failure_restarts_after_the_first_backoff() -> None:
    exits = [Exit(started_at=0.0, exited_at=10.0, returncode=-signal.SIGKILL)]
    decision = decide(POLICY, exits, now=10.0)
    assert decision == Restart(at=10.5, delay=0.5, attempt=1, budget=5)


def test_quick_failures_double_the_backoff_up_to_its_cap() -> None:
    delays = [backoff(POLICY, _quick_failures(n)) for n in range(1, 10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_child_that_ran_long_enough_starts_its_backoff_over() -> None:
    exits = _quick_failures(4)
    exits.append(
        Exit(started_at=exits[-1].exited_at, exited_at=exits[-1].exited_at + 61.0, returncode=1)
    )
    assert backoff(POLICY, exits) == 0.5
    # and the quick failure after it is the second step, not the sixth
    exits.append(Exit(exits[-1].exited_at + 0.5, exits[-1].exited_at + 1.0, returncode=1))
    assert backoff(POLICY, exits) == 1.0


def test_the_budget_allows_burst_restarts_and_gives_up_on_the_next_failure() -> None:
    exits = _quick_failures(5)
    now = exits[-1].exited_at
    decision = decide(POLICY, exits, now)
    assert isinstance(decision, Restart)
    assert (decision.attempt, decision.budget) == (5, 5)
    exits = _quick_failures(6)
    decision = decide(POLICY, exits, exits[-1].exited_at)
    assert decision == GiveUp(failures=6, interval=300.0)
    assert decision.reason == "it failed 6 times within 300s"


def test_failures_older_than_the_interval_are_forgiven() -> None:
    old = _quick_failures(5, start=0.0)
    fresh = Exit(started_at=400.0, exited_at=401.0, returncode=1)
    assert failures_in_window(POLICY, [*old, fresh], now=401.0) == 1
    decision = decide(POLICY, [*old, fresh], now=401.0)
    assert isinstance(decision, Restart)
    assert decision.attempt == 1


def test_a_burst_of_zero_never_restarts() -> None:
    policy = RestartPolicy(burst=0)
    assert isinstance(decide(policy, _quick_failures(1), now=1001.0), GiveUp)


def test_exit_reasons_name_the_signal_or_the_code() -> None:
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert describe_exit(3) == "exited with code 3"
    # a worker never ends on its own, so code 0 is a failure too and says so
    assert "must not end on its own" in describe_exit(0)
    assert describe_exit(None) == "is gone (exit status unknown)"


def test_the_knobs_reach_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.stack.supervisor import restart_policy

    monkeypatch.setenv("POSTWIRE_RESTART_BURST", "2")
    monkeypatch.setenv("POSTWIRE_RESTART_INTERVAL", "60")
    monkeypatch.setenv("POSTWIRE_RESTART_BACKOFF_MAX", "4")
    policy = restart_policy(Settings().restart)
    assert (policy.burst, policy.interval, policy.backoff_max) == (2, 60.0, 4.0)
    assert policy.backoff_first == 0.5


def _status() -> StackStatus:
    return StackStatus(
        supervisor=4242,
        children=(
            ChildStatus("kafka", 10, "running", started_at=100.0),
            ChildStatus(
                "worker",
                11,
                "restarting",
                started_at=90.0,
                restarts=2,
                last_exit="was killed by SIGKILL",
                next_start_at=112.0,
            ),
            ChildStatus("api", 12, "gave up", started_at=95.0, restarts=5, last_exit="x"),
        ),
    )


def test_ps_rows_show_state_uptime_and_restarts() -> None:
    rows = status_rows(_status(), now=110.0, supervisor_alive=True, alive={})
    assert [r["state"] for r in rows] == ["running", "restarting in 2s", "gave up"]
    assert [r["uptime"] for r in rows] == [10.0, None, None]
    assert [r["restarts"] for r in rows] == [0, 2, 5]
    assert rows[1]["last_exit"] == "was killed by SIGKILL"


def test_without_a_supervisor_ps_trusts_only_the_pids() -> None:
    rows = status_rows(
        _status(), now=110.0, supervisor_alive=False, alive={"kafka": False, "worker": True}
    )
    assert [r["state"] for r in rows] == ["stopped", "running", "gave up"]


def test_a_restart_due_is_never_shown_as_negative() -> None:
    child = ChildStatus("w", None, "restarting", next_start_at=5.0)
    assert describe_state(child, now=9.0) == "restarting in 0s"


def test_the_status_file_round_trips_and_is_replaced_whole(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    write_status(tmp_path, _status())
    assert read_status(tmp_path) == _status()
    again = StackStatus(4243, (), gave_up="gave up on api")
    write_status(tmp_path, again)
    assert read_status(tmp_path) == again
    assert [p.name for p in tmp_path.iterdir()] == ["children.json"]


def test_every_child_has_a_place_in_the_stop_order() -> None:
    from streams.stack.stack import stop_rank

    names = ["postgres", "kafka2", "mystery", "kafka", "worker17", "api", "sinks"]
    assert sorted(names, key=stop_rank) == [
        "api",
        "sinks",
        "worker17",
        "kafka2",
        "kafka",
        "postgres",
        "mystery",
    ]


def test_a_child_with_a_log_of_its_own_is_tailed_from_it(tmp_path: Path) -> None:
    """A broker's stdout says little; what the supervisor shows comes from its log4j file."""
    out, own = tmp_path / "server.out", tmp_path / "server.log"
    out.write_text("jvm banner\n")
    own.write_text("".join(f"line {i}\n" for i in range(30)) + "ERROR disk full\n")
    proc = ManagedProcess("kafka", [], out, tmp_path / "kafka.pid", tail_path=own)
    assert proc.own_log == own
    tail = proc.log_tail(3)
    assert tail.splitlines() == ["line 28", "line 29", "ERROR disk full"]
    plain = ManagedProcess("sinks", [], out, tmp_path / "sinks.pid")
    assert plain.log_tail() == "jvm banner"
