"""Per endpoint: posts in flight and a breaker, each endpoint on its own."""

from __future__ import annotations

from streams.deliver.breaker import BreakerPolicy
from streams.stages.webhooks import EndpointGates


def test_concurrency_is_per_endpoint() -> None:
    gates = EndpointGates(BreakerPolicy(threshold=3), per_endpoint=2)
    assert gates.admit("a", 0) == "go"
    assert gates.admit("a", 0) == "go"
    assert gates.admit("a", 0) == "busy"
    assert gates.admit("b", 0) == "go"  # another tenant's endpoint is not affected
    gates.done("a", True, 1)
    assert gates.admit("a", 1) == "go"


def test_failures_pause_only_the_failing_endpoint() -> None:
    gates = EndpointGates(BreakerPolicy(threshold=3, cool_down=10), per_endpoint=10)
    for _ in range(3):
        assert gates.admit("a", 0) == "go"
        gates.done("a", False, 0)
    assert gates.admit("a", 1) == "paused"
    assert 8 < gates.retry_after("a", 1) <= 10
    assert gates.admit("b", 1) == "go"
    # after the cool-down one probe goes; its success closes the breaker
    assert gates.admit("a", 11) == "go"
    assert gates.admit("a", 11) == "paused"
    gates.done("a", True, 11)
    assert gates.admit("a", 12) == "go"


def test_prune_forgets_idle_endpoints_only() -> None:
    gates = EndpointGates(BreakerPolicy(threshold=3), per_endpoint=2)
    gates.admit("a", 0)
    gates.done("a", True, 0)
    gates.admit("b", 0)
    gates.done("b", False, 0)
    gates.prune(1)
    assert set(gates._breakers) == {"b"}
