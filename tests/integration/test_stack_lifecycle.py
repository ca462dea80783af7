"""`postwire up` / `down` as a user runs them: data survives a restart, Ctrl-C leaves no process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.errors import StackError
from streams.kafka.config import client_options
from streams.settings import Settings
from streams.stack.kafka import EmbeddedKafka
from streams.stack.process import pid_alive
from tests.conftest import stack_settings

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "streams"]


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWIRE_")}
    return {**env, **settings.to_env()}


def _pids(settings: Settings) -> dict[str, int]:
    """The children's pids (the supervisor's pid file beside them is not a child's)."""
    run = settings.data_dir / "run"
    return {p.stem: int(p.read_text()) for p in run.glob("*.pid") if p.stem != "supervisor"}


def _cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_data_survives_down_and_up(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data")
    started = _cli(settings, "up", "--detach", "--no-workers")
    assert started.returncode == 0, started.stderr
    assert settings.bootstrap in started.stdout
    assert settings.dsn in started.stdout
    pids = _pids(settings)
    assert set(pids) == {"kafka", "postgres"}
    try:
        producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all")
        await producer.start()
        await producer.send_and_wait(settings.topics.events, b"kept across restarts", key=b"k")
        await producer.stop()
        conn = await asyncpg.connect(settings.dsn)
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('t-restart', 'kept')")
        await conn.close()
    finally:
        stopped = _cli(settings, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(pid_alive(pid) for pid in pids.values())

    again = _cli(settings, "up", "--detach", "--no-workers")
    assert again.returncode == 0, again.stderr
    try:
        conn = await asyncpg.connect(settings.dsn)
        assert (
            await conn.fetchval("SELECT name FROM tenants WHERE tenant_id = 't-restart'") == "kept"
        )
        await conn.close()
        consumer = AIOKafkaConsumer(
            settings.topics.events,
            **client_options(settings.kafka),
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10000)
        finally:
            await consumer.stop()
        values = [m.value for msgs in batch.values() for m in msgs]
        assert values == [b"kept across restarts"]
    finally:
        assert _cli(settings, "down").returncode == 0
    assert not any(pid_alive(pid) for pid in _pids(settings).values())


async def test_foreground_up_stops_every_child_on_sigint(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data")
    proc = subprocess.Popen(
        [*CLI, "up"],
        env=_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(proc.stdout.readline)
        lines.append(line)
        if "press Ctrl-C" in line or not line:
            break
    assert any("postwire is up" in line for line in lines), "".join(lines)
    pids = _pids(settings)
    assert set(pids) == {"kafka", "postgres", "worker", "tx", "bulk", "webhooks", "sinks", "api"}
    assert all(pid_alive(pid) for pid in pids.values())
    assert int((settings.data_dir / "run" / "supervisor.pid").read_text()) == proc.pid
    proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(proc.wait, 90) == 0
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert not (settings.data_dir / "run" / "supervisor.pid").exists()


async def test_up_refuses_a_second_stack_on_the_same_data_dir(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data")
    assert _cli(settings, "up", "--detach", "--no-workers").returncode == 0
    try:
        second = _cli(settings, "up", "--detach", "--no-workers")
        assert second.returncode == 1
        assert "already running" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        assert _cli(settings, "down").returncode == 0


def test_a_taken_port_is_one_clear_sentence(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = stack_settings(tmp_path, kafka_port=port)
        with pytest.raises(
            StackError, match=rf"port {port} on 127.0.0.1 is already taken.*POSTWIRE_KAFKA_PORT"
        ):
            EmbeddedKafka(settings).prepare()


def test_missing_java_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no java on it
    with pytest.raises(StackError, match="java was not found on PATH; install Java 17"):
        EmbeddedKafka(stack_settings(tmp_path)).prepare()
