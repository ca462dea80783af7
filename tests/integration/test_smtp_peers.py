"""The delivery benchmark's peers: smtp-sink counts exactly what each contender sent, and no
Postfix or smtp-sink process of ours outlives the run. Needs the Debian postfix package, so it
skips (not fails) where Postfix is not installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.bench.smtp_peers import (
    PostfixRelay,
    SmtpSink,
    build_messages,
    ensure_postfix,
    raw_send,
    run_baselines,
)
from streams.errors import StackError

try:
    BINARIES = ensure_postfix()
except StackError as exc:
    pytest.skip(f"Postfix is not installed ({exc})", allow_module_level=True)

if os.geteuid() != 0:
    pytest.skip("a private Postfix instance must be started as root", allow_module_level=True)

pytestmark = pytest.mark.integration

N = 200


def _postfix_processes() -> set[int]:
    """Live (not zombie) processes running smtp-sink or a Postfix daemon, by PID."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
        except OSError:
            continue  # gone, or a zombie (no exe link)
        if exe == str(BINARIES.smtp_sink) or exe.startswith("/usr/lib/postfix/"):
            found.add(int(entry.name))
    return found


async def test_run_baselines_counts_exactly_n_and_leaves_nothing_running() -> None:
    before = _postfix_processes()
    result = await run_baselines(N, message_bytes=2000, connections=8, warmup=20, timeout=120)
    assert result["raw_sink_count"] == N
    assert result["postfix_sink_count"] == N
    assert result["raw_per_s"] > 0
    assert result["postfix_per_s"] > 0
    assert _postfix_processes() <= before


async def test_sink_and_relay_stop_their_own_processes(tmp_path: Path) -> None:
    sink = SmtpSink(BINARIES, tmp_path)
    relay = PostfixRelay(BINARIES, sink)
    sink.start()
    try:
        sink_pid = sink.pid
        await raw_send(sink.host, sink.port, build_messages(10, 1000), 2)
        relay.start()
        assert relay.pids(), "the relay's master should be running"
        await relay.inject(build_messages(30, 1000), 3)
        assert await relay.wait_drained(60) > 0
        assert relay.queued() == 0
        assert sink.accepted() == 40
        relay_pids = relay.pids()
    finally:
        relay.cleanup()
        sink.stop()
    assert relay.pids() == []
    assert not relay.root.exists()
    live = _postfix_processes()
    assert sink_pid not in live
    assert not live & set(relay_pids)
