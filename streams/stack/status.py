"""What the supervisor knows about its children, as `postwire ps` shows it: written by the
supervisor to ``<data dir>/run/children.json`` (atomically, so a reader never sees half a file)
and read back by ``ps``. Times are wall-clock epoch seconds, so another process can use them."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "STATUS_FILE",
    "ChildStatus",
    "StackStatus",
    "describe_state",
    "read_status",
    "status_rows",
    "write_status",
]

STATUS_FILE = "children.json"

State = Literal["starting", "running", "restarting", "gave up", "stopped"]


@dataclass(frozen=True)
class ChildStatus:
    name: str
    pid: int | None
    state: State
    started_at: float | None = None
    restarts: int = 0
    last_exit: str | None = None
    next_start_at: float | None = None


@dataclass(frozen=True)
class StackStatus:
    supervisor: int
    children: tuple[ChildStatus, ...] = field(default_factory=tuple)
    gave_up: str | None = None  # why the supervisor stopped the stack, when it gave up

    def to_json(self) -> str:
        data = asdict(self)
        data["children"] = [asdict(c) for c in self.children]
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackStatus:
        data = json.loads(text)
        children = tuple(ChildStatus(**c) for c in data.get("children", ()))
        return cls(int(data["supervisor"]), children, data.get("gave_up"))


def write_status(run_dir: Path, status: StackStatus) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}")
    tmp.write_text(status.to_json())
    os.replace(tmp, path)


def read_status(run_dir: Path) -> StackStatus | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return StackStatus.from_json((run_dir / STATUS_FILE).read_text())
    return None


def describe_state(child: ChildStatus, now: float) -> str:
    if child.state == "restarting" and child.next_start_at is not None:
        return f"restarting in {max(0.0, child.next_start_at - now):.0f}s"
    return child.state


def _uptime(child: ChildStatus, now: float) -> float | None:
    if child.state != "running" or child.started_at is None:
        return None
    return max(0.0, now - child.started_at)


def status_rows(
    status: StackStatus, now: float, *, supervisor_alive: bool, alive: dict[str, bool]
) -> list[dict[str, Any]]:
    """One row per child for `ps`. A supervisor that is gone updates nothing any more: its
    children's states then come from whether their pids are still there (``alive``)."""
    rows = []
    for child in status.children:
        shown = child
        if not supervisor_alive and child.state in ("starting", "running", "restarting"):
            running = alive.get(child.name, False)
            shown = replace(child, state="running" if running else "stopped", next_start_at=None)
        uptime = _uptime(shown, now)
        rows.append(
            {
                "name": shown.name,
                "pid": shown.pid,
                "state": describe_state(shown, now),
                "uptime": None if uptime is None else round(uptime, 1),
                "restarts": shown.restarts,
                "last_exit": shown.last_exit,
            }
        )
    return rows
