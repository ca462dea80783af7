"""Child processes the stack starts: started with a pid file, stopped by that pid only."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streams.errors import StackError
from streams.procs import pid_alive

__all__ = ["ManagedProcess", "pid_alive", "port_in_use", "stop_pid"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux only: the kernel sends SIGTERM to the child when `postwire up` dies, even by SIGKILL,
    # so a crashed supervisor never leaves a broker or postmaster behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Signal ``pid``, wait for it to exit, SIGKILL after ``timeout``; True if it was killed."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return False
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        time.sleep(0.05)
    return True


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    pid_path: Path
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 30.0
    env: dict[str, str] | None = None
    user: str | None = None
    cwd: Path | None = None
    # where the process logs when its stdout is not where it says why it stopped (a JVM's
    # log4j file): what log_tail reads
    tail_path: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    started_at: float | None = None  # time.monotonic() of the last start

    def start(self, *, detach: bool) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    user=self.user,
                    cwd=self.cwd,
                    # own session: Ctrl-C reaches only the supervisor, which stops children in order
                    start_new_session=True,
                    preexec_fn=None if detach else _die_with_parent,  # noqa: PLW1509
                )
            except OSError as exc:
                raise StackError(f"could not start {self.name} ({self.argv[0]}): {exc}") from exc
        self.started_at = time.monotonic()
        self.pid_path.write_text(str(self.popen.pid))
        return self.popen.pid

    @property
    def pid(self) -> int | None:
        if self.popen is not None:
            return self.popen.pid
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        pid = self.pid
        return pid is not None and pid_alive(pid)

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def stop(self) -> None:
        pid = self.pid
        if pid is not None and self.running():
            stop_pid(pid, self.stop_signal, self.stop_timeout)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=1)
        self.pid_path.unlink(missing_ok=True)

    @property
    def own_log(self) -> Path:
        """The log that says what the process did (``tail_path`` when it has one)."""
        return self.tail_path or self.log_path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.own_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
