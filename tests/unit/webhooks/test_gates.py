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
