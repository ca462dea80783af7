"""Message and job ids: unpredictable without the server secret, stable for a retry, and telling
purely whether they were issued to a tenant."""

from __future__ import annotations

import re
import uuid

from streams.contract.ids import MessageIds, base_id
from streams.secret import ServerSecret

IDS = MessageIds(ServerSecret(b"a" * 32))
OTHER_INSTALL = MessageIds(ServerSecret(b"b" * 32))


def test_an_idempotency_key_fixes_the_id_per_tenant_and_install() -> None:
    first = IDS.message_id("acme", "order-42")
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert IDS.message_id("acme", "order-42") == first  # a retry gets the same id
    assert IDS.message_id("other", "order-42") != first
    assert IDS.message_id("acme", "order-43") != first
    # the secret is what makes it: another install (or a tenant without the secret) cannot
    # compute it, unlike the uuid5 of a fixed namespace it replaces
    assert OTHER_INSTALL.message_id("acme", "order-42") != first
    old = uuid.uuid5(uuid.UUID("6c1f3f9e-52a4-4d5e-9a59-2a4b0d1cb0e1"), "acme\x1forder-42").hex
    assert first != old


def test_ids_without_a_key_are_random() -> None:
    assert len({IDS.message_id("acme", None) for _ in range(100)}) == 100
    assert len({IDS.job_id("acme", None) for _ in range(100)}) == 100


def test_the_owner_tag_tells_whose_id_it_is() -> None:
    mine = IDS.message_id("acme", "order-42")
    random_one = IDS.message_id("acme", None)
    assert IDS.issued_to("acme", mine)
    assert IDS.issued_to("acme", random_one)
    assert not IDS.issued_to("other", mine)
    assert not OTHER_INSTALL.issued_to("acme", mine)
    # derived ids are checked by what they are built on
    assert IDS.issued_to("acme", f"{mine}.3")
    assert IDS.issued_to("acme", f"{mine}.filter0001.16648.5515E0B88.0")
    assert not IDS.issued_to("other", f"{mine}.3")


def test_altered_and_malformed_ids_are_nobodys() -> None:
    mine = IDS.message_id("acme", "order-42")
    flipped = mine[:5] + ("0" if mine[5] != "0" else "1") + mine[6:]
    assert not IDS.issued_to("acme", flipped)
    for bad in ("", "m1", mine.upper(), mine[:-1], mine + "0", str(uuid.uuid4())):
        assert not IDS.issued_to("acme", bad), bad


def test_tenant_and_key_boundaries_cannot_be_shifted() -> None:
    # the separator inside a tenant or key must not let one pair stand for another
    assert IDS.message_id("a\x1fb", "c") != IDS.message_id("a", "b\x1fc")
    assert IDS.job_id("a\x1fb", "c") != IDS.job_id("a", "b\x1fc")


def test_job_ids_are_keyed_apart_from_message_ids() -> None:
    job = IDS.job_id("acme", "batch-1")
    assert re.fullmatch(r"[0-9a-f]{32}", job)
    assert IDS.job_id("acme", "batch-1") == job
    assert IDS.job_id("other", "batch-1") != job
    assert job != IDS.message_id("acme", "batch-1")


def test_base_id_is_the_part_before_the_first_dot() -> None:
    assert base_id("abc.1.2") == "abc"
    assert base_id("abc") == "abc"
