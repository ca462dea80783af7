"""`postwire verify FILE`: addresses from CSV or JSON Lines in, a results CSV out, resumable.

Pure: reading and writing go through file objects the command opens; nothing here talks to
the API.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from streams.errors import InputFileError

__all__ = ["COLUMNS", "done_addresses", "read_addresses", "result_row"]

COLUMNS: Final = (
    "email",
    "is_reachable",
    "score",
    "reasons",
    "normalized",
    "suggestion",
    "accepts_mail",
    "is_disposable",
    "is_role_account",
    "is_free_provider",
    "is_deliverable",
    "is_catch_all",
)
_EMAIL_COLUMNS: Final = ("email", "address", "e-mail", "email_address")


def _from_csv(lines: TextIO, column: str | None, name: str) -> Iterator[str]:
    sample = lines.readline()
    if not sample:
        return
    header = next(csv.reader([sample]))
    lowered = [h.strip().lower() for h in header]
    wanted = [column.lower()] if column else list(_EMAIL_COLUMNS)
    index = next((lowered.index(c) for c in wanted if c in lowered), None)
    if index is None:
        if column or len(header) != 1 or "@" not in header[0]:
            raise InputFileError(
                f"{name} has no {column or 'email'} column (header: {', '.join(header)})"
            )
        # a bare list of addresses without a header
        index = 0
        yield header[0].strip()
    for row in csv.reader(lines):
        if len(row) > index and row[index].strip():
            yield row[index].strip()


def _from_jsonl(lines: TextIO, column: str | None, name: str) -> Iterator[str]:
    key = column or "email"
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputFileError(f"{name} line {number} is not JSON: {exc}") from exc
        value = item.get(key) if isinstance(item, dict) else item
        if not isinstance(value, str):
            raise InputFileError(f"{name} line {number} has no {key!r} string")
        if value.strip():
            yield value.strip()


def read_addresses(path: Path, lines: TextIO, column: str | None = None) -> list[str]:
    """Distinct addresses in file order; ``.jsonl``/``.ndjson`` are JSON Lines, else CSV."""
    reader = _from_jsonl if path.suffix.lower() in (".jsonl", ".ndjson") else _from_csv
    return list(dict.fromkeys(reader(lines, column, path.name)))


def done_addresses(lines: Iterable[str]) -> set[str]:
    """Addresses already in a results CSV (a run to resume)."""
    rows = csv.reader(lines)
    header = next(rows, None)
    if header is None:
        return set()
    if tuple(header) != COLUMNS:
        raise InputFileError("the output file exists and is not a postwire results CSV")
    return {row[0] for row in rows if row}


def _flag(value: Any) -> str:
    return "" if value is None else str(value).lower()


def result_row(result: dict[str, Any]) -> list[str]:
    """One results CSV row from an API verification result."""
    syntax = result.get("syntax") or {}
    mx = result.get("mx") or {}
    misc = result.get("misc") or {}
    smtp = result.get("smtp") or {}
    return [
        result["email"],
        result.get("is_reachable", ""),
        str(result.get("score", "")),
        ";".join(result.get("reasons") or []),
        result.get("normalized") or "",
        syntax.get("suggestion") or "",
        _flag(mx.get("accepts_mail")),
        _flag(misc.get("is_disposable")),
        _flag(misc.get("is_role_account")),
        _flag(misc.get("is_free_provider")),
        _flag(smtp.get("is_deliverable")),
        _flag(smtp.get("is_catch_all")),
    ]
