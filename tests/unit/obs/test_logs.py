"""The logging set-up: every logger's records come out as one redacted JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from streams.errors import ConfigError
from streams.obs.logs import KEY_FILE, configure_logging, log_hash_key
from streams.secret import stored_key
from streams.settings import Settings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, sys.excepthook
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    sys.excepthook = hook
    logging.captureWarnings(False)
    structlog.reset_defaults()


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_stdlib_and_structlog_lines_are_redacted_json(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, log_hash_key="k1")
    out = io.StringIO()
    configure_logging(settings.logs, "worker", stream=out, stages="gate")
    logging.getLogger("aiokafka.x").info("to %s", "bob@example.com", extra={"rcpt": "c@x.io"})
    try:
        raise ValueError("refused dave@example.com")
    except ValueError:
        logging.getLogger("postwire.deliver").exception("failed for erin@example.com")
    structlog.get_logger("postwire.y").warning("hello %s", "frank@example.com", n=3)
    logging.getLogger("postwire.z").debug("not at info level")

    text = out.getvalue()
    for local in ("bob@", "c@x", "dave@", "erin@", "frank@"):
        assert local not in text
    first, second, third = lines(out)
    assert first["event"].startswith("to addr:")  # type: ignore[union-attr]
    assert first["level"] == "info"
    assert first["logger"] == "aiokafka.x"
    assert first["role"] == "worker"
    assert first["stages"] == "gate"
    assert isinstance(first["pid"], int)
    assert str(first["timestamp"]).endswith("Z")
    assert str(first["rcpt"]).startswith("addr:")
    assert second["level"] == "error"
    assert "ValueError: refused addr:" in str(second["exception"])
    assert third["logger"] == "postwire.y"
    assert third["n"] == 3
    assert str(third["event"]).startswith("hello addr:")


@pytest.mark.usefixtures("restore_logging")
def test_console_format_is_redacted_too(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging(Settings(data_dir=tmp_path, log_format="console").logs, "sinks", stream=out)
    logging.getLogger("postwire").warning("bounce from bob@example.com")
    assert "bob@" not in out.getvalue()
    assert "@example.com" in out.getvalue()


def test_the_stored_key_is_made_once_private_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "sub" / KEY_FILE
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(stored_key(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8
    assert len(set(keys)) == 1
    assert len(keys[0]) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored_key(path) == keys[0]
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no candidates left behind


def test_a_configured_key_wins_and_an_empty_one_means_unset(tmp_path: Path) -> None:
    assert log_hash_key(Settings(data_dir=tmp_path, log_hash_key="secret").logs) == b"secret"
    assert not (tmp_path / KEY_FILE).exists()
    made = log_hash_key(Settings(data_dir=tmp_path, log_hash_key="").logs)
    assert made == (tmp_path / KEY_FILE).read_text().encode()


def test_an_empty_key_file_is_an_error_not_a_weak_key(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("")
    with pytest.raises(ConfigError, match="empty"):
        stored_key(tmp_path / KEY_FILE)
