"""Queue control, the way Postfix operators know it (pure): hold, release, delete, flush.

Commands are records on the single-partition control topic; every worker reads all of them from
the start and folds them into a ``ControlState``, so every worker obeys the same rules and a
restarted worker obeys them again. A command names its tasks with a ``Selector`` and carries the
time it was given, which decides what it applies to:

- ``hold``: matching mail is parked instead of delivered until a ``release`` (``postsuper -h``).
  A domain hold also parks mail that arrives later: that is how an operator pauses a destination.
- ``release``: lifts the holds with the same selector (``postsuper -H``); a task released at T is
  no longer held by holds older than T, so releasing one task out of a held domain works.
- ``delete``: mail queued *before* the command is dropped (``postsuper -d``); later mail is not.
- ``flush``: deferred mail waiting since before the command is retried now (``postqueue -f``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = [
    "ACTIONS",
    "Command",
    "ControlState",
    "Selector",
    "TaskMeta",
    "Verdict",
]

Action = Literal["hold", "release", "delete", "flush"]
ACTIONS: tuple[Action, ...] = ("hold", "release", "delete", "flush")
Verdict = Literal["deliver", "hold", "delete"]


@dataclass(frozen=True)
class TaskMeta:
    """What a selector can match on, and the times the rules compare against (ms)."""

    task_id: str
    message_id: str
    tenant: str
    domain: str
    created_at: int  # when the request was made: "queued before" for delete
    released_at: int = 0  # when a release last freed this task, 0 if never


@dataclass(frozen=True)
class Selector:
    """All given fields must match; ``everything`` matches every task (Postfix's ``ALL``)."""

    task_id: str | None = None
    message_id: str | None = None
    tenant: str | None = None
    domain: str | None = None
    everything: bool = False

    def __post_init__(self) -> None:
        given = [self.task_id, self.message_id, self.tenant, self.domain]
        if not self.everything and all(v is None for v in given):
            raise ValueError("a selector needs a task id, message id, tenant or domain, or ALL")
        if self.domain is not None:
            object.__setattr__(self, "domain", self.domain.strip().rstrip(".").lower())

    def matches(self, task: TaskMeta) -> bool:
        if self.everything:
            return True
        return (
            (self.task_id is None or self.task_id == task.task_id)
            and (self.message_id is None or self.message_id == task.message_id)
            and (self.tenant is None or self.tenant == task.tenant)
            and (self.domain is None or self.domain == task.domain.lower())
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, False)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selector:
        return cls(
            task_id=data.get("task_id"),
            message_id=data.get("message_id"),
            tenant=data.get("tenant"),
            domain=data.get("domain"),
            everything=bool(data.get("everything", False)),
        )

    def describe(self) -> str:
        return (
            "ALL" if self.everything else ", ".join(f"{k}={v}" for k, v in self.to_json().items())
        )


@dataclass(frozen=True)
class Command:
    action: Action
    selector: Selector
    at: int  # ms since the epoch, when the operator gave it
    command_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.command_id,
                "action": self.action,
                "selector": self.selector.to_json(),
                "at": self.at,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Command:
        """Raises ValueError with the reason for anything that is not a command."""
        try:
            data = orjson.loads(raw)
            action = data["action"]
            if action not in ACTIONS:
                raise ValueError(f"unknown action {action!r}")
            return cls(action, Selector.from_json(data["selector"]), int(data["at"]), data["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a control command: {exc}") from exc


@dataclass
class ControlState:
    holds: list[Command] = field(default_factory=list)
    deletes: list[Command] = field(default_factory=list)
    flushes: list[Command] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def apply(self, command: Command) -> bool:
        """Fold one command in; False for one already applied (the topic is read again on start)."""
        if command.command_id in self.seen:
            return False
        self.seen.add(command.command_id)
        if command.action == "hold":
            self.holds.append(command)
        elif command.action == "release":
            self.holds = [
                h
                for h in self.holds
                if not (command.selector.everything or h.selector == command.selector)
            ]
        elif command.action == "delete":
            self.deletes.append(command)
        else:
            self.flushes.append(command)
        return True

    def verdict(self, task: TaskMeta) -> Verdict:
        if any(d.at > task.created_at and d.selector.matches(task) for d in self.deletes):
            return "delete"
        if any(h.at > task.released_at and h.selector.matches(task) for h in self.holds):
            return "hold"
        return "deliver"

    def flushed(self, task: TaskMeta, waiting_since: int) -> bool:
        """Whether a deferred task that has waited since ``waiting_since`` (ms) may go now."""
        return any(f.at > waiting_since and f.selector.matches(task) for f in self.flushes)

    def prune(self, now_ms: int, keep_ms: int) -> None:
        """Forget deletes and flushes older than any task can be (the retry ladder's max age)."""
        self.deletes = [d for d in self.deletes if now_ms - d.at <= keep_ms]
        self.flushes = [f for f in self.flushes if now_ms - f.at <= keep_ms]
