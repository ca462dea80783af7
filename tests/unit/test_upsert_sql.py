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
