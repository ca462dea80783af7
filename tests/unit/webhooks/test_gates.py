"""Per endpoint: posts in flight, a bounded wait for a slot, and a breaker, each endpoint on
its own."""

from __future__ import annotations

import asyncio

from streams.deliver.breaker import BreakerPolicy
from streams.stages.webhooks import EndpointGates


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_concurrency_is_per_endpoint_and_the_wait_bounded() -> None:
    clock = Clock()
    gates = EndpointGates(BreakerPolicy(threshold=3), per_endpoint=2)
    assert await gates.admit("a", clock) == "go"
    assert await gates.admit("a", clock) == "go"
    # two more may wait for a slot, the fifth is busy at once
    waiting = [asyncio.ensure_future(gates.admit("a", clock)) for _ in range(2)]
    await asyncio.sleep(0)
    assert gates.waiting["a"] == 2
    assert await gates.admit("a", clock) == "busy"
    assert await gates.admit("b", clock) == "go"  # another tenant's endpoint is not affected
    gates.done("a", True, 1)
    assert await asyncio.wait_for(waiting[0], 1) == "go"
    assert not waiting[1].done()
    gates.done("a", True, 1)
    assert await asyncio.wait_for(waiting[1], 1) == "go"
    assert gates.in_flight["a"] == 2


async def test_failures_pause_only_the_failing_endpoint() -> None:
    clock = Clock()
    gates = EndpointGates(BreakerPolicy(threshold=3, cool_down=10), per_endpoint=10)
    for _ in range(3):
        assert await gates.admit("a", clock) == "go"
        gates.done("a", False, 0)
    clock.now = 1
    assert await gates.admit("a", clock) == "paused"
    assert 8 < gates.retry_after("a", 1) <= 10
    assert await gates.admit("b", clock) == "go"
    # after the cool-down one probe goes; its success closes the breaker
    clock.now = 11
    assert await gates.admit("a", clock) == "go"
    assert await gates.admit("a", clock) == "paused"
    gates.done("a", True, 11)
    clock.now = 12
    assert await gates.admit("a", clock) == "go"


async def test_prune_forgets_idle_endpoints_only() -> None:
    clock = Clock()
    gates = EndpointGates(BreakerPolicy(threshold=3), per_endpoint=2)
    await gates.admit("a", clock)
    gates.done("a", True, 0)
    await gates.admit("b", clock)
    gates.done("b", False, 0)
    gates.prune(1)
    assert set(gates._breakers) == {"b"}


def test_only_global_addresses_count_as_public() -> None:
    from streams.webhooks.post import _global, _private_literal

    assert _global("93.184.216.34")
    assert _global("2606:2800:220:1:248:1893:25c8:1946")
    for private in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fe80::1"):
        assert not _global(private), private
    assert not _global("::ffff:127.0.0.1")
    assert _private_literal("http://169.254.169.254/latest") is not None
    assert _private_literal("https://hooks.example.com/x") is None
    assert _private_literal("http://93.184.216.34/") is None
