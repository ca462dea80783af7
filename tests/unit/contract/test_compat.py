from __future__ import annotations

import copy
from typing import Any

import pytest

from streams.contract.compat import backward_problems
from streams.contract.registry import RECORD_NAMES, load_schema_set

SCHEMAS = load_schema_set()


@pytest.mark.parametrize("record", RECORD_NAMES)
def test_current_schema_reads_every_released_version(record: str) -> None:
    current = SCHEMAS.current[record]
    assert SCHEMAS.history[record], f"no released version of {record} in schemas/history"
    for old in SCHEMAS.history[record]:
        assert backward_problems(current.raw, old.raw) == [], f"{record} v{old.version}"


@pytest.mark.parametrize("record", RECORD_NAMES)
def test_working_copy_is_released(record: str) -> None:
    latest = SCHEMAS.history[record][-1]
    assert SCHEMAS.current[record].fingerprint == latest.fingerprint, (
        f"{record}.avsc changed since v{latest.version}: check compatibility and run "
        "`postwire schemas snapshot`"
    )


def _request() -> dict[str, Any]:
    return copy.deepcopy(SCHEMAS.current["EmailRequest"].raw)


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def test_new_field_without_default_is_incompatible() -> None:
    new = _request()
    new["fields"].append({"name": "campaign", "type": "string"})
    assert backward_problems(new, _request()) == [
        "EmailRequest.campaign: new field without a default"
    ]


def test_new_field_with_default_is_compatible() -> None:
    new = _request()
    new["fields"].append({"name": "campaign", "type": "string", "default": ""})
    assert backward_problems(new, _request()) == []


def test_type_change_is_incompatible_but_promotion_is_not() -> None:
    old = copy.deepcopy(SCHEMAS.current["DeliveryEvent"].raw)
    promoted = copy.deepcopy(old)
    _field(promoted, "attempt")["type"] = "long"
    assert backward_problems(promoted, old) == []
    narrowed = copy.deepcopy(old)
    _field(narrowed, "tenant")["type"] = "int"
    assert backward_problems(narrowed, old) == [
        "DeliveryEvent.tenant: type changed from string to int"
    ]


def test_enum_losing_a_symbol_needs_a_default() -> None:
    old = _request()
    new = _request()
    _field(new, "operation")["type"]["symbols"].remove("track")
    assert backward_problems(new, old) == [
        "EmailRequest.operation: enum lost symbols ['track'] and has no default"
    ]
    _field(new, "operation")["type"]["default"] = "send"
    assert backward_problems(new, old) == []


def test_nested_shared_type_change_is_found() -> None:
    new = _request()
    recipients = _field(new, "recipients")["type"]["items"]
    recipients["fields"].append({"name": "locale", "type": "string"})
    assert backward_problems(new, _request()) == [
        "EmailRequest.recipients[].locale: new field without a default"
    ]


def test_dropping_null_from_a_union_is_incompatible() -> None:
    new = _request()
    _field(new, "idempotency_key")["type"] = "string"
    problems = backward_problems(new, _request())
    assert problems == ["EmailRequest.idempotency_key: type changed from null to string"]
