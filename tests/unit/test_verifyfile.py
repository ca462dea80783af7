"""Reading address files and writing result rows for `postwire verify FILE`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from streams.cli.verifyfile import COLUMNS, done_addresses, read_addresses, result_row
from streams.errors import InputFileError


def test_csv_with_a_header_finds_the_email_column_and_dedups() -> None:
    text = "Name,E-mail\nA,a@x.example\nB, b@x.example \nC,\nD,a@x.example\n"
    assert read_addresses(Path("l.csv"), io.StringIO(text)) == ["a@x.example", "b@x.example"]
    assert read_addresses(Path("l.csv"), io.StringIO("id,work\n1,w@x\n"), "WORK") == ["w@x"]


def test_a_bare_list_without_header_is_read_too() -> None:
    assert read_addresses(Path("l.txt"), io.StringIO("a@x\nb@x\n")) == ["a@x", "b@x"]


def test_csv_without_an_address_column_is_refused() -> None:
    with pytest.raises(InputFileError, match="no email column"):
        read_addresses(Path("l.csv"), io.StringIO("name,phone\nA,1\n"))


def test_json_lines_take_objects_or_strings() -> None:
    text = '{"email": "a@x"}\n\n"b@x"\n{"email": "a@x"}\n'
    assert read_addresses(Path("l.jsonl"), io.StringIO(text)) == ["a@x", "b@x"]
    with pytest.raises(InputFileError, match="line 2 is not JSON"):
        read_addresses(Path("l.jsonl"), io.StringIO('"a@x"\n{oops\n'))
    with pytest.raises(InputFileError, match="line 1 has no 'email'"):
        read_addresses(Path("l.ndjson"), io.StringIO('{"mail": "a@x"}\n'))


def test_resuming_reads_done_addresses_and_refuses_foreign_files() -> None:
    existing = [",".join(COLUMNS), "a@x,safe,90,,a@x,,true,false,false,false,,"]
    assert done_addresses(existing) == {"a@x"}
    assert done_addresses([]) == set()
    with pytest.raises(InputFileError, match="not a postwire results CSV"):
        done_addresses(["email,verdict", "a@x,ok"])


def test_result_rows_flatten_the_sections() -> None:
    row = result_row(
        {
            "email": "a@gmial.com",
            "is_reachable": "risky",
            "score": 40,
            "reasons": ["typo", "free_provider"],
            "normalized": "a@gmial.com",
            "syntax": {"suggestion": "a@gmail.com"},
            "mx": {"accepts_mail": True},
            "misc": {"is_disposable": False, "is_role_account": False, "is_free_provider": True},
            "smtp": None,
        }
    )
    assert len(row) == len(COLUMNS)
    assert dict(zip(COLUMNS, row, strict=True)) == {
        "email": "a@gmial.com",
        "is_reachable": "risky",
        "score": "40",
        "reasons": "typo;free_provider",
        "normalized": "a@gmial.com",
        "suggestion": "a@gmail.com",
        "accepts_mail": "true",
        "is_disposable": "false",
        "is_role_account": "false",
        "is_free_provider": "true",
        "is_deliverable": "",
        "is_catch_all": "",
    }
