from __future__ import annotations

import pytest
from typer.testing import CliRunner

from streams.cli.main import app
from streams.db.keys import SCOPES, parse_scopes
from streams.errors import UnknownScopeError


def test_scopes_are_deduplicated_and_put_in_order() -> None:
    assert parse_scopes("verify, send,verify") == ("send", "verify")
    assert parse_scopes("read") == ("read",)
    assert parse_scopes("send,verify,read") == SCOPES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("send,admin", "unknown scope 'admin'; the scopes are send, verify, read"),
        ("Send", "unknown scope 'Send'"),
        (" , ", "--scopes needs at least one of send, verify, read"),
    ],
)
def test_bad_scopes_are_one_sentence(text: str, message: str) -> None:
    with pytest.raises(UnknownScopeError, match=message):
        parse_scopes(text)


def test_cli_refuses_an_unknown_scope_before_touching_the_database() -> None:
    # no database is configured or running: the scope check must come first
    result = CliRunner().invoke(app, ["keys", "create", "--tenant", "t", "--scopes", "admin"])
    assert result.exit_code == 2, result.output
    assert "error: unknown scope 'admin'" in result.output
    assert "\n" not in result.output.strip(), result.output


def test_every_keys_command_has_help() -> None:
    for command in ("create", "list", "revoke"):
        result = CliRunner().invoke(app, ["keys", command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output
