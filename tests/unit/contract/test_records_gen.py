"""The typed records module is generated from the schemas and must not drift from them."""

from __future__ import annotations

import json

from schemas import SCHEMA_DIR
from streams.contract import records
from streams.contract.gen import MODULE_PATH, generate


def test_generated_records_match_the_schemas() -> None:
    assert MODULE_PATH.read_text() == generate(), (
        "streams/contract/records.py is out of date: run python -m streams.contract.gen"
    )


def test_every_schema_field_is_a_typed_key() -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        if path.name == "common.avsc":
            continue
        schema = json.loads(path.read_text())
        typed = getattr(records, schema["name"])
        assert list(typed.__annotations__) == [f["name"] for f in schema["fields"]]
