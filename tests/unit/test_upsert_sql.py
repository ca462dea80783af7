from __future__ import annotations

from sinks.writer import upsert_sql


def test_insert_only_tables_do_nothing_on_conflict() -> None:
    sql = upsert_sql("events", ("event_id", "type"), ("event_id",), ())
    assert sql == (
        "INSERT INTO events (event_id, type) SELECT event_id, type FROM _pw_events "
        "ON CONFLICT (event_id) DO NOTHING"
    )


def test_state_tables_update_once_per_key() -> None:
    sql = upsert_sql(
        "messages", ("message_id", "recipient", "state"), ("message_id", "recipient"), ("state",)
    )
    assert "SELECT DISTINCT ON (message_id, recipient)" in sql
    assert sql.endswith("ON CONFLICT (message_id, recipient) DO UPDATE SET state = EXCLUDED.state")


def test_update_tables_never_roll_back_and_keep_the_newest_row_of_a_batch() -> None:
    from sinks.writer import newest_per_key

    sql = upsert_sql("messages", ("id", "state", "at"), ("id",), ("state", "at"), "at")
    assert sql.endswith("WHERE messages.at <= EXCLUDED.at")
    rows = [
        ("m1", "deferred", 1),
        ("m2", "delivered", 5),
        ("m1", "delivered", 3),
        ("m1", "late", 2),
    ]
    kept = newest_per_key(rows, ("id", "state", "at"), ("id",), "at")
    assert sorted(kept) == [("m1", "delivered", 3), ("m2", "delivered", 5)]
    # without an order column the last one wins (a tombstone after an add on one topic)
    last = newest_per_key(rows, ("id", "state", "at"), ("id",), None)
    assert sorted(last) == [("m1", "late", 2), ("m2", "delivered", 5)]


def test_a_row_of_one_tenant_is_never_updated_by_another_tenants_record() -> None:
    columns = ("message_id", "recipient", "tenant_id", "state", "updated_at")
    sql = upsert_sql(
        "messages", columns, ("message_id", "recipient"), ("state", "updated_at"), "updated_at"
    )
    assert sql.endswith(
        "WHERE messages.updated_at <= EXCLUDED.updated_at"
        " AND messages.tenant_id = EXCLUDED.tenant_id"
    )
    # where the tenant is part of the key, the key already keeps tenants apart
    keyed = upsert_sql(
        "suppressions", ("tenant_id", "address", "reason"), ("tenant_id", "address"), ("reason",)
    )
    assert "WHERE" not in keyed
