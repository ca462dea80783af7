"""A message's hops from its rows (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

from streams.cli.trace import hops, jaeger_search, traces_hint

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def _event(kind: str, seconds: float, **detail: object) -> dict[str, object]:
    return {
        "type": kind,
        "recipient": "ann@example.com" if kind != "processed" else None,
        "reason": detail.pop("reason", None),
        "detail": detail,
        "occurred_at": T0 + timedelta(seconds=seconds),
        "landed_at": T0 + timedelta(seconds=seconds + 0.05),
    }


def test_hops_are_in_time_order_with_replies_and_row_landings() -> None:
    requests = [{"operation": "send", "created_at": T0}]
    events = [
        _event("delivered", 61.0, attempt=2, smtp={"code": 250, "message": "queued"}),
        _event("processed", 0.02),
        _event(
            "deferred",
            0.5,
            attempt=1,
            reason="greylisted",
            smtp={"code": 451, "enhanced_code": "4.7.1", "message": "try later"},
        ),
    ]
    found = hops(requests, events)
    assert [h.what for h in found] == [
        "request",
        "processed",
        "processed row",
        "deferred",
        "deferred row",
        "delivered",
        "delivered row",
    ]
    deferred = found[3]
    assert deferred.detail == "attempt 1; greylisted; 451 4.7.1 try later"
    assert deferred.recipient == "ann@example.com"
    assert found[5].detail == "attempt 2; 250 queued"
    repeated = hops(
        [],
        [
            _event(
                "delivered", 1, smtp={"code": 250, "enhanced_code": "2.0.0", "message": "2.0.0 OK"}
            )
        ],
    )
    assert repeated[0].detail == "250 2.0.0 OK"
    assert found[-1].at - found[0].at == timedelta(seconds=61.05)


def test_with_tracing_off_there_is_no_traces_hint() -> None:
    assert traces_hint(None, "http://jaeger:16686", "postwire", "m1") is None


def test_the_traces_hint_names_the_tag_and_a_jaeger_search() -> None:
    hint = traces_hint("http://collector:4318", None, "postwire", "abc.def")
    assert hint == (
        "traces (exported to http://collector:4318): search the spans by tag"
        " postwire.message_id=abc.def"
    )
    linked = traces_hint("http://collector:4318", "http://localhost:16686/", "pw", "abc.def")
    assert linked is not None
    url = linked.rpartition(": ")[2]
    parsed = urlparse(url)
    assert parsed.path == "/search"
    query = parse_qs(parsed.query)
    assert query["service"] == ["pw-api"]
    assert json.loads(query["tags"][0]) == {"postwire.message_id": "abc.def"}
    assert jaeger_search("http://j", "pw-api", "x") == url.replace(
        "http://localhost:16686", "http://j"
    ).replace("abc.def", "x")
