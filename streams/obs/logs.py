"""Structured logs: one JSON object per line from every logger in the process, addresses hashed.

structlog renders, but the stdlib ``logging`` module stays the front door: faust, mode, aiokafka,
asyncpg and our own ``logging.getLogger`` calls all end in the one root handler installed here,
whose ``ProcessorFormatter`` turns each record into ``{"timestamp", "level", "logger", "event",
"role", "pid", ...}``. ``structlog.get_logger()`` loggers go through the same chain.

Every string in a line (the message, extra fields, the traceback) passes through ``Redactor``
last, just before rendering, so nothing a processor adds escapes it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import orjson
import structlog
from pydantic import SecretStr

from streams.obs.redact import Redactor
from streams.secret import stored_key

__all__ = ["KEY_FILE", "LogSettings", "configure_logging", "log_hash_key"]

KEY_FILE = "log-hash.key"
EventDict = MutableMapping[str, Any]


@dataclass(frozen=True)
class LogSettings:
    """What logging needs to know; ``streams.settings`` fills it (``settings.logs``)."""

    level: str = "info"
    format: Literal["json", "console"] = "json"
    hash_key: SecretStr | None = None
    data_dir: Path = Path(".")  # where the generated hash key is kept when ``hash_key`` is unset


def log_hash_key(logs: LogSettings) -> bytes:
    if logs.hash_key is not None and logs.hash_key.get_secret_value():
        return logs.hash_key.get_secret_value().encode()
    return stored_key(logs.data_dir / KEY_FILE)


class _Static:
    """Fields every line of this process carries."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __call__(self, _logger: Any, _name: str, event: EventDict) -> EventDict:
        for key, value in self.fields.items():
            event.setdefault(key, value)
        return event


class _Redact:
    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(self, _logger: Any, _name: str, event: EventDict) -> EventDict:
        redacted: EventDict = self.redactor.value(event)
        return redacted


def _orjson(obj: Any, default: Callable[[Any], Any] | None = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def _renderer(fmt: str) -> Any:
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=False)
    return structlog.processors.JSONRenderer(serializer=_orjson)


def configure_logging(
    logs: LogSettings, role: str, *, stream: IO[str] | None = None, **fields: Any
) -> Redactor:
    """Send every log record of this process through one redacting structlog handler.

    Call it first thing in a process's entry point: it replaces the root logger's handlers, so
    anything configured earlier (``basicConfig``) is dropped. Returns the redactor, for code
    that wants to hash an address for a message of its own."""
    redactor = Redactor(log_hash_key(logs))
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _Static({"role": role, "pid": os.getpid(), **fields}),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        # stdlib records: extra={...} fields become JSON fields like structlog's own
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _Redact(redactor),
            _renderer(logs.format),
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logs.level.upper())
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # warnings and uncaught exceptions would otherwise reach stderr as plain text
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    return redactor


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("postwire").critical("uncaught exception", exc_info=(kind, exc, tb))
