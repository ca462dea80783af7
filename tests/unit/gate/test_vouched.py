"""Which records the ingress vouches for: the gate owes those a directory lookup, budget or not."""

from __future__ import annotations

from tests.unit.gate.helpers import RAW, SECRET, TRUST, ingress_signed, key_signed


def test_a_record_the_ingress_signed_is_vouched_for_even_with_an_unknown_key_id() -> None:
    arrival = ingress_signed(key_id="k_made_a_moment_ago")
    assert TRUST.vouched(arrival.headers, arrival.key, arrival.raw)


def test_a_direct_producers_record_a_forgery_or_an_altered_one_is_not() -> None:
    direct = key_signed()
    assert not TRUST.vouched(direct.headers, direct.key, direct.raw)
    forged = ingress_signed(signing_key=SECRET.subkey("not-the-ingress"))
    assert not TRUST.vouched(forged.headers, forged.key, forged.raw)
    genuine = ingress_signed()
    assert not TRUST.vouched(genuine.headers, genuine.key, RAW + b"!")
    assert not TRUST.vouched(genuine.headers, b"other", genuine.raw)
    assert not TRUST.vouched((), genuine.key, genuine.raw)
