"""Supervision as an operator sees it: a child killed with SIGKILL comes back with a new pid
(`ps --json` counts the restart), one that keeps dying is given up on after its budget with the
whole stack stopped, and a detached stack is supervised the same way until `down`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.settings import Settings
from streams.stack.process import ManagedProcess, pid_alive
from streams.stack.restart import RestartPolicy
from streams.stack.stack import Stack
from streams.stack.supervisor import Supervisor, SupervisorLog, supervise
from tests.conftest import stack_settings

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "streams"]


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWIRE_")}
    return {**env, **settings.to_env(), **extra}


def _cli(settings: Settings, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        check=False,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ps(settings: Settings) -> dict[str, Any]:
    shown = _cli(settings, "ps", "--json")
    assert shown.returncode == 0, shown.stderr
    data: dict[str, Any] = json.loads(shown.stdout)
    return data


def _child(data: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in data["children"] if c["name"] == name)
    return found


def _pid_file(settings: Settings, name: str) -> int:
    return int((settings.data_dir / "run" / f"{name}.pid").read_text())


async def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _restarted(settings: Settings, name: str, old_pid: int, restarts: int) -> Any:
    data = _ps(settings)
    child = _child(data, name)
    if child["pid"] != old_pid and child["restarts"] == restarts and child["state"] == "running":
        return child
    return None


# --- the loop on cheap real processes, no servers -------------------------------------------


def _bare_stack(tmp_path: Path, *argvs: list[str]) -> Stack:
    # external servers named: the stack runs none of its own, only the processes given
    settings = stack_settings(
        tmp_path, kafka_bootstrap="127.0.0.1:1", database_url="postgresql://127.0.0.1:1/x"
    )
    stack = Stack(settings, workers=False)
    stack.apps = [
        ManagedProcess(
            name=f"child{i}",
            argv=argv,
            log_path=tmp_path / "logs" / f"child{i}.log",
            pid_path=tmp_path / "run" / f"child{i}.pid",
            stop_timeout=5.0,
        )
        for i, argv in enumerate(argvs)
    ]
    for app in stack.apps:
        app.start(detach=False)
    return stack


async def test_a_child_exiting_zero_is_restarted_then_given_up_on(tmp_path: Path) -> None:
    # prints a line and exits 0 at once: a worker must never do that
    stack = _bare_stack(
        tmp_path,
        [sys.executable, "-c", "print('bye from the child')"],
        [sys.executable, "-c", "import time; time.sleep(600)"],
    )
    lines: list[str] = []
    policy = RestartPolicy(burst=2, interval=60.0, backoff_first=0.05, backoff_max=0.2)
    log = SupervisorLog(tmp_path / "logs" / "supervisor.log", lambda line, _: lines.append(line))
    supervisor = Supervisor(stack, policy, log, detach=False, poll=0.05, pid=os.getpid())
    sleeper = stack.apps[1].pid
    assert sleeper is not None
    try:
        reason = await asyncio.wait_for(supervisor.run(asyncio.Event()), timeout=60)
    finally:
        stack.stop()
    assert reason == (
        "gave up on child0: it failed 3 times within 60s "
        "(last: exited with code 0 (it must not end on its own))"
    )
    assert [line.split(" (pid")[0] for line in lines if "child0 (pid" in line] == ["child0"] * 3
    assert any("restart 1 of 2" in line for line in lines)
    assert any("restart 2 of 2" in line for line in lines)
    written = (tmp_path / "logs" / "supervisor.log").read_text()
    assert "| bye from the child" in written  # the child's last log lines, under the event
    status = supervisor.status()
    assert {c.name: (c.state, c.restarts) for c in status.children} == {
        "child0": ("gave up", 2),
        "child1": ("running", 0),
    }
    assert not pid_alive(sleeper)  # stack.stop() above stopped the healthy one too


async def test_a_stop_request_restarts_nothing(tmp_path: Path) -> None:
    stack = _bare_stack(tmp_path, [sys.executable, "-c", "import time; time.sleep(600)"])
    stop = asyncio.Event()
    pid = stack.apps[0].pid
    assert pid is not None

    async def stop_soon() -> None:
        await asyncio.sleep(0.5)
        stop.set()

    stopper = asyncio.create_task(stop_soon())
    reason = await asyncio.wait_for(supervise(stack, stop, detach=False), timeout=60)
    await stopper
    assert reason is None
    assert not pid_alive(pid)
    assert not (tmp_path / "run" / "supervisor.pid").exists()
    status = json.loads((tmp_path / "run" / "children.json").read_text())
    assert [(c["name"], c["state"], c["restarts"]) for c in status["children"]] == [
        ("child0", "stopped", 0)
    ]


# --- `postwire up` with its real servers ----------------------------------------------------


@pytest.fixture
def own_tmp() -> Iterator[Path]:
    """A data dir outside pytest's: another pytest session on this host resets
    /tmp/pytest-of-<user> to 0700, and a PostgreSQL restarted as its own system user (as root,
    see README) could then no longer reach its data dir."""
    path = Path(tempfile.mkdtemp(prefix="postwire-supervise-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_foreground_up_restarts_a_killed_child_and_gives_up_after_its_budget(
    own_tmp: Path,
) -> None:
    tmp_path = own_tmp
    # a second of backoff: the killed postmaster's backends have gone by then, so the new one
    # never finds their shared memory still in use (one more failure of the budget)
    settings = stack_settings(tmp_path / "data", restart_burst=1, restart_backoff=1.0)
    proc = subprocess.Popen(
        [*CLI, "up", "--no-workers"],
        env=_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stdout.readline)
            lines.append(line)
            if "press Ctrl-C" in line or not line:
                break
        assert any("postwire is up" in line for line in lines), "".join(lines)
        kafka = _pid_file(settings, "kafka")
        first = _pid_file(settings, "postgres")
        os.kill(first, signal.SIGKILL)
        child = await _until(
            lambda: _restarted(settings, "postgres", first, 1), 90, "postgres to come back"
        )
        assert child["last_exit"] == "was killed by SIGKILL"
        assert pid_alive(child["pid"])
        assert _child(_ps(settings), "kafka")["restarts"] == 0
        # the budget (one restart) is spent: the next death stops everything
        os.kill(child["pid"], signal.SIGKILL)
        code = await asyncio.to_thread(proc.wait, 120)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
    assert code == 1, stderr
    assert "postgres" in stderr
    assert "was killed by SIGKILL" in stderr
    assert "restart 1 of 1" in stderr
    assert "error: gave up on postgres: it failed 2 times within 300s" in stderr
    assert not pid_alive(kafka)
    data = _ps(settings)
    assert data["gave_up"].startswith("gave up on postgres")
    assert {c["name"]: c["state"] for c in data["children"]} == {
        "kafka": "stopped",
        "postgres": "gave up",
    }
    log = (settings.data_dir / "logs" / "supervisor.log").read_text()
    assert "restart 1 of 1" in log
    assert "gave up on postgres" in log


async def test_detached_up_is_supervised_until_down(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data")
    started = _cli(settings, "up", "--detach", "--no-workers")
    assert started.returncode == 0, started.stderr
    assert "postwire is up" in started.stdout
    try:
        data = _ps(settings)
        supervisor = data["supervisor"]["pid"]
        assert data["supervisor"]["running"] is True
        assert int((settings.data_dir / "run" / "supervisor.pid").read_text()) == supervisor
        # the children survive the command that started them, owned by the supervisor
        first = _pid_file(settings, "kafka")
        assert _ps_parent(first) == supervisor
        os.kill(first, signal.SIGKILL)
        child = await _until(
            lambda: _restarted(settings, "kafka", first, 1), 120, "kafka to come back"
        )
        assert _ps_parent(child["pid"]) == supervisor
        assert _pid_file(settings, "kafka") == child["pid"]
        postgres = _pid_file(settings, "postgres")
    finally:
        stopped = _cli(settings, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines()[0] == f"stopped supervisor (pid {supervisor})"
    assert "stopped kafka" in stopped.stdout
    assert "stopped postgres" in stopped.stdout
    assert not any(pid_alive(pid) for pid in (supervisor, child["pid"], postgres))
    assert not list((settings.data_dir / "run").glob("*.pid"))
    again = _cli(settings, "down")
    assert again.stdout.strip() == "nothing was running"


async def test_down_stops_the_children_of_a_supervisor_that_is_gone(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data")
    started = _cli(settings, "up", "--detach", "--no-workers")
    assert started.returncode == 0, started.stderr
    supervisor = _ps(settings)["supervisor"]["pid"]
    children = {name: _pid_file(settings, name) for name in ("kafka", "postgres")}
    try:
        os.kill(supervisor, signal.SIGKILL)
        await _until(lambda: not pid_alive(supervisor), 30, "the supervisor to die")
        # detached children do not die with their supervisor; ps tells them by their pids
        data = _ps(settings)
        assert data["supervisor"]["running"] is False
        assert {c["name"]: c["state"] for c in data["children"]} == {
            "kafka": "running",
            "postgres": "running",
        }
        assert all(pid_alive(pid) for pid in children.values())
    finally:
        stopped = _cli(settings, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == [
        f"stopped kafka (pid {children['kafka']})",
        f"stopped postgres (pid {children['postgres']})",
    ]
    assert not any(pid_alive(pid) for pid in children.values())


def _ps_parent(pid: int) -> int:
    # field 4 of /proc/<pid>/stat, after the parenthesised command name
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])
