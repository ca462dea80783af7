"""Chaos cases: each one runs a stack of its own (a fault may leave it worse for wear), so they
never share the integration suite's pipeline. The counts of every case are printed at the end
of the run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streams.stack.stack import Stack
from tests.chaos.harness import Counts
from tests.conftest import pipeline_overrides, stack_settings
from tests.peers.world import World

RESULTS: list[tuple[str, Counts]] = []


@pytest.fixture
async def chaos_stack(tmp_path: Path, world: World) -> AsyncIterator[Stack]:
    overrides = pipeline_overrides(world)
    # the API door must take the workload as fast as it comes
    overrides.update(api_rate=10_000.0, api_burst=10_000, partitions=4)
    running = Stack(stack_settings(tmp_path / "stack", **overrides), workers=True)
    await running.start(detach=False)
    try:
        yield running
    finally:
        running.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("chaos counts")
    for case, counts in RESULTS:
        terminalreporter.write_line(counts.line(case))
