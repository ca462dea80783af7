"""Kill -9 of each process type, and a PostgreSQL stop, in the middle of a steady stream of
send and verify requests; then count. Every acknowledged request must have exactly one terminal
outcome row and lose nothing; a message may reach the receiver twice only when it was in an
SMTP transaction at the moment of the fault: at most ``deliver_concurrency`` per lane process
the fault stopped (the bound the README states).

The default run takes the cases in ``QUICK`` (a delivery worker and the broker: the two faults
that once doubled mail); ``POSTWIRE_CHAOS=all`` runs every case."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from streams.contract.codec import Codec
from streams.stack.process import ManagedProcess
from streams.stack.stack import Stack
from tests.chaos.conftest import RESULTS
from tests.chaos.harness import (
    Counts,
    Supervised,
    Workload,
    chaos_domains,
    count,
    kill,
    received_for,
    run_workload,
    settled,
    wait_healthy,
)
from tests.integration.helpers import new_tenant
from tests.peers.world import World

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

QUICK = {"tx", "broker"}
CASES = [
    "worker",
    "tx",
    "bulk",
    "sinks",
    "api",
    "broker",
    "broker_frozen",
    "postgres",
    "postgres_frozen",
]
FAULT_AT = 3.0  # seconds into the workload
# a frozen broker outlasts the producers' request timeout (40 s): every record in flight then
# fails, and each process must still lose nothing and send nothing twice
FROZEN_FOR = {"broker_frozen": 50.0, "postgres_frozen": 10.0}


def _selected(case: str) -> bool:
    return case in QUICK or os.environ.get("POSTWIRE_CHAOS") == "all"


def _victim(stack: Stack, case: str) -> ManagedProcess:
    name = case.removesuffix("_frozen")
    procs = {"broker": stack.kafka, "postgres": stack.postgres}
    if name in procs:
        server = procs[name]
        assert server is not None
        return server.process
    return next(p for p in stack.apps if p.name == name)


async def _fault(stack: Stack, case: str, world: World, work: Workload) -> int:
    """Make the fault; return how many of the run's messages the receiver had by then."""
    await asyncio.sleep(FAULT_AT)
    before = received_for(world, work)
    victim = _victim(stack, case)
    if case in FROZEN_FOR:
        pid = victim.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(FROZEN_FOR[case])
        finally:
            os.kill(pid, signal.SIGCONT)
    elif case == "postgres":
        await asyncio.to_thread(victim.stop)  # a clean stop; the supervisor starts it again
    else:
        kill(victim)  # the supervisor brings it back
    return before


@pytest.mark.parametrize("case", CASES)
async def test_a_fault_mid_run_loses_nothing_and_doubles_within_the_bound(
    case: str, chaos_stack: Stack, world: World, codec: Codec
) -> None:
    if not _selected(case):
        pytest.skip("a long chaos case: POSTWIRE_CHAOS=all runs it")
    settings = chaos_stack.settings
    domains = chaos_domains(world)
    tenant, key = await new_tenant(settings, "chaos", settle=True)
    work = Workload(door="api" if case == "api" else "kafka")
    await wait_healthy(chaos_stack)
    supervised = Supervised(chaos_stack)
    supervised.start()
    began = time.monotonic()
    try:
        _, before = await asyncio.gather(
            run_workload(settings, codec, tenant, key, work, domains),
            _fault(chaos_stack, case, world, work),
        )

        async def probe() -> Counts:
            return await count(settings, work, world)

        counts = await settled(probe, timeout=180.0)
    finally:
        gave_up = await supervised.stop()
    counts.restarts = supervised.restarts
    counts.before_fault = before
    counts.seconds = time.monotonic() - began
    RESULTS.append((case, counts))
    print(counts.line(case))
    assert gave_up is None, gave_up
    lanes_hit = {"tx": 1, "bulk": 1, "broker": 2, "broker_frozen": 2}.get(case, 0)
    bound = lanes_hit * settings.deliver_concurrency
    assert 0 < before < counts.acked_sends, "the fault came before or after the sends"
    assert counts.lost == 0, counts
    assert counts.delivered_events_doubled <= counts.received_twice, counts
    assert counts.received >= counts.acked_sends, counts
    assert counts.received_twice <= bound, counts
