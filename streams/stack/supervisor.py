"""The loop that keeps a started stack's children running: it notices a child that died,
restarts it after the policy's backoff (streams/stack/restart.py), says why on stderr and in
``<data dir>/logs/supervisor.log``, records every child's state for `postwire ps`, and gives up
(the caller then stops the stack in order) only when a child's restart budget is spent.

Children are restarted from the thread that runs the loop: PR_SET_PDEATHSIG fires when the
thread that forked the child ends, so a child forked from a worker thread would die with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from streams.errors import StackError
from streams.settings import RestartSettings
from streams.stack.process import ManagedProcess
from streams.stack.restart import Exit, GiveUp, RestartPolicy, decide, describe_exit
from streams.stack.stack import SUPERVISOR_PID, Stack
from streams.stack.status import ChildStatus, StackStatus, State, write_status

__all__ = ["Supervisor", "SupervisorLog", "restart_policy", "supervise"]

_TAIL_LINES = 5


def restart_policy(settings: RestartSettings) -> RestartPolicy:
    return RestartPolicy(
        burst=settings.burst,
        interval=settings.interval,
        backoff_first=settings.backoff,
        backoff_max=settings.backoff_max,
        stable_after=settings.stable_after,
    )


async def supervise(
    stack: Stack,
    stop: asyncio.Event,
    *,
    detach: bool,
    echo: Callable[[str, str], None] | None = None,
    ready: Callable[[], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
) -> str | None:
    """Keep ``stack`` (started) running until ``stop`` is set or a child's budget is spent,
    then stop it in order; return why it gave up, or None after a requested stop. ``ready``
    runs once the pid file and the first status are written (so `down` and `ps` work from
    the moment the caller says the stack is up)."""
    settings = stack.settings
    pid = os.getpid()
    run_dir = settings.data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SUPERVISOR_PID).write_text(str(pid))
    log = SupervisorLog(settings.data_dir / "logs" / "supervisor.log", echo)
    supervisor = Supervisor(stack, restart_policy(settings.restart), log, detach=detach, pid=pid)
    reason = None
    try:
        supervisor.write_status()
        if ready is not None:
            ready()
        reason = await supervisor.run(stop)
    finally:
        if on_stopping is not None:
            on_stopping()
        # the caller says these itself (stopping..., stopped, the reason)
        log.event("stopping the stack" + (f" ({reason})" if reason else ""), echo=False)
        # nothing restarts while this runs: the loop above has ended
        await asyncio.to_thread(stack.stop)
        supervisor.write_status(stopped=True)
        log.event("stopped", echo=False)
        (run_dir / SUPERVISOR_PID).unlink(missing_ok=True)
    return reason


class SupervisorLog:
    """One line per event in the supervisor log (with the dead child's last log lines under
    it), and the same line through ``echo`` (stderr in the foreground)."""

    def __init__(self, path: Path, echo: Callable[[str, str], None] | None = None) -> None:
        self.path = path
        self.echo = echo

    def event(self, line: str, tail: str = "", *, echo: bool = True) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        text = f"{stamp} {line}\n" + "".join(f"    | {t}\n" for t in tail.splitlines() if t)
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as log:
                log.write(text)
        if echo and self.echo is not None:
            self.echo(line, tail)


@dataclass
class _Child:
    started_at: float  # monotonic
    started_wall: float
    exits: list[Exit] = field(default_factory=list)
    restarts: int = 0
    last_exit: str | None = None
    next_at: float | None = None  # monotonic; set while waiting to restart
    next_wall: float | None = None
    state: State = "running"


class Supervisor:
    def __init__(
        self,
        stack: Stack,
        policy: RestartPolicy,
        log: SupervisorLog,
        *,
        detach: bool,
        poll: float = 0.5,
        pid: int,
    ) -> None:
        self.stack = stack
        self.policy = policy
        self.log = log
        self.detach = detach
        self.poll = poll
        self.pid = pid
        now, wall = time.monotonic(), time.time()
        self.children = {}
        for name, proc in stack.children().items():
            began = proc.started_at if proc.started_at is not None else now
            self.children[name] = _Child(began, wall - (now - began))
        self.gave_up: str | None = None

    @property
    def run_dir(self) -> Path:
        return self.stack.settings.data_dir / "run"

    async def run(self, stop: asyncio.Event) -> str | None:
        """Supervise until ``stop`` is set (None) or a child's budget is spent (the reason)."""
        self.log.event(
            f"supervising {', '.join(self.children)} (supervisor pid {self.pid})", echo=False
        )
        while not stop.is_set():
            if self.check(time.monotonic()):
                self.write_status()
            if self.gave_up is not None:
                return self.gave_up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.poll)
        return None

    def check(self, now: float) -> bool:
        """One pass over the children; True when something changed."""
        changed = False
        for name, proc in self.stack.children().items():
            child = self.children[name]
            if child.next_at is None:
                if proc.running():
                    continue
                self._died(name, proc, child, now, proc.exit_code(), proc.log_tail(_TAIL_LINES))
                changed = True
            elif now >= child.next_at:
                self._restart(name, proc, child, now)
                changed = True
            if self.gave_up is not None:
                break
        return changed

    def _died(
        self,
        name: str,
        proc: ManagedProcess,
        child: _Child,
        now: float,
        returncode: int | None,
        tail: str,
    ) -> None:
        exit_ = Exit(child.started_at, now, returncode)
        # enough history for the budget's window and the backoff's doubling to reach its cap
        keep = max(16, 2 * (self.policy.burst + 1))
        child.exits = [*child.exits[-keep:], exit_]
        why = describe_exit(returncode)
        child.last_exit = why
        decision = decide(self.policy, child.exits, now)
        head = f"{name} (pid {proc.pid}) {why} after {exit_.uptime:.1f}s up"
        if isinstance(decision, GiveUp):
            child.state, child.next_at, child.next_wall = "gave up", None, None
            self.gave_up = f"gave up on {name}: {decision.reason} (last: {why})"
            self.log.event(f"{head}; {self.gave_up}; stopping the stack", tail)
            return
        child.state = "restarting"
        child.next_at = decision.at
        child.next_wall = time.time() + (decision.at - now)
        self.log.event(
            f"{head}; restart {decision.attempt} of {decision.budget} "
            f"(within {self.policy.interval:g}s) in {decision.delay:.1f}s; "
            f"its log: {proc.own_log}",
            tail,
        )

    def _restart(self, name: str, proc: ManagedProcess, child: _Child, now: float) -> None:
        child.next_at = child.next_wall = None
        child.restarts += 1
        child.started_at, child.started_wall = now, time.time()
        try:
            pid = proc.start(detach=self.detach)
        except StackError as exc:
            # a start that fails at once is one more failure of the budget
            self._died(name, proc, child, now, None, str(exc))
            return
        child.state = "running"
        self.stack.record_pid(name, pid)
        self.log.event(f"restarted {name}: pid {pid} (restart {child.restarts} in all)")

    def status(self, *, stopped: bool = False) -> StackStatus:
        procs = self.stack.children()
        rows = []
        for name, child in self.children.items():
            state = child.state
            if stopped and state != "gave up":
                state = "stopped"
            rows.append(
                ChildStatus(
                    name=name,
                    pid=procs[name].pid,
                    state=state,
                    started_at=child.started_wall,
                    restarts=child.restarts,
                    last_exit=child.last_exit,
                    next_start_at=None if stopped else child.next_wall,
                )
            )
        return StackStatus(self.pid, tuple(rows), self.gave_up)

    def write_status(self, *, stopped: bool = False) -> None:
        with contextlib.suppress(OSError):
            write_status(self.run_dir, self.status(stopped=stopped))
