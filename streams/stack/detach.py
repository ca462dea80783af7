"""`postwire up --detach`: a background supervisor process (``python -m streams supervise``,
in a session of its own) starts the stack, owns its children and keeps them running; the
command that started it waits for one report line on a pipe (the stack is up, or why not) and
returns. The children are started without PR_SET_PDEATHSIG, as before: should the supervisor
die, they keep running and `postwire down` still stops them by pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from streams.errors import PostwireError, StackError
from streams.runtime.eventloop import stop_on_signals
from streams.settings import Settings
from streams.stack.process import stop_pid
from streams.stack.stack import Stack, StackInfo
from streams.stack.supervisor import supervise

__all__ = ["run_detached_supervisor", "spawn_supervisor"]


def _log_path(settings: Settings) -> Path:
    return settings.data_dir / "logs" / "supervisor.log"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def spawn_supervisor(settings: Settings, *, workers: bool) -> StackInfo:
    """Start the background supervisor and return the stack's details once it is up."""
    log_path = _log_path(settings)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "streams", "supervise"]
    if not workers:
        argv.append("--no-workers")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **settings.to_env()},
            # out of the terminal's session: a Ctrl-C there must not reach it
            start_new_session=True,
        )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
    except BaseException:
        # interrupted while it starts: it stops what it started and exits
        stop_pid(proc.pid, signal.SIGTERM, timeout=180.0)
        raise
    finally:
        proc.stdout.close()
    try:
        report = json.loads(line) if line else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        code = proc.wait(timeout=180)
        raise StackError(
            f"the supervisor exited (code {code}) before the stack was up; {log_path} ends:\n"
            f"{_tail(log_path)}"
        )
    if not report.get("ok"):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=180)
        raise StackError(str(report.get("error")))
    info = report["info"]
    return StackInfo(
        bootstrap=info["bootstrap"],
        database_url=info["database_url"],
        data_dir=Path(info["data_dir"]),
        pids={str(k): int(v) for k, v in info["pids"].items()},
        started_in=float(info["started_in"]),
        topics_created=list(info["topics_created"]),
    )


def _report(data: dict[str, Any]) -> None:
    os.write(1, (json.dumps(data) + "\n").encode())


async def run_detached_supervisor(stack: Stack) -> int:
    """The background supervisor: start the stack, report on stdout (a pipe to `up --detach`),
    then point stdout at the log and supervise until SIGTERM (`postwire down`)."""
    stop = stop_on_signals()
    try:
        info = await stack.start(detach=True)
    except PostwireError as exc:
        _report({"ok": False, "error": str(exc)})
        return 1
    except BaseException as exc:
        _report({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        raise
    data = asdict(info)
    data["data_dir"] = str(info.data_dir)

    def ready() -> None:
        _report({"ok": True, "info": data})
        # the pipe's reader is gone once `up --detach` returns; later output goes to the log
        with _log_path(stack.settings).open("ab") as log:
            os.dup2(log.fileno(), 1)

    reason = await supervise(stack, stop, detach=True, ready=ready)
    return 1 if reason else 0
