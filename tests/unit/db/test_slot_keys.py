"""The advisory lock keys of the shared connection slots (pure)."""

from __future__ import annotations

from streams.db.slots import group_key


def test_a_group_key_is_a_stable_int4() -> None:
    keys = [group_key("postwire", f"mx{i}.example") for i in range(2000)]
    assert all(-(2**31) <= key < 2**31 for key in keys)
    assert group_key("postwire", "mx1.example") == group_key("postwire", "mx1.example")
    # a hash of 32 bits: a few collisions in 2,000 names would be bad luck, not many
    assert len(set(keys)) >= 1995


def test_every_pipeline_has_keys_of_its_own() -> None:
    assert group_key("postwire", "mx.example") != group_key("other", "mx.example")
    # the separator keeps the namespace and the name apart
    assert group_key("a", "b.example") != group_key("ab", ".example")
