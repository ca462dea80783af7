"""`postwire send | status | verify FILE` against the session stack's API, with a real key."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli.main import app
from streams.cli.verifyfile import COLUMNS
from streams.settings import Settings
from tests.conftest import SENDER_DOMAIN, free_port
from tests.integration.helpers import eventually, new_tenant

# the api fixture waits until the stack's API answers /healthz
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("api")]


async def _cli(settings: Settings, key: str | None, *args: str) -> tuple[int, str]:
    env = {"POSTWIRE_API_URL": settings.api_base}
    if key is not None:
        env["POSTWIRE_API_KEY"] = key

    def invoke() -> tuple[int, str]:
        result = CliRunner().invoke(app, list(args), env=env)
        return result.exit_code, result.output

    return await asyncio.to_thread(invoke)


async def test_send_then_status(stack: Settings, tmp_path: Path) -> None:
    _tenant, key = await new_tenant(stack, "cli-send")
    code, output = await _cli(
        stack,
        key,
        "send",
        "--to",
        "cli@inbox.example",
        "--from",
        f"ops@{SENDER_DOMAIN}",
        "--subject",
        "From the CLI",
        "--text",
        "hello",
        "--json",
    )
    assert code == 0, output
    message_id = json.loads(output)["message_id"]

    async def state() -> str:
        code, output = await _cli(stack, key, "status", message_id, "--json")
        # the events sink can know the message before the messages sink knows its recipients
        recipients = json.loads(output)["recipients"] if code == 0 else []
        return str(recipients[0]["state"]) if recipients else ""

    assert await eventually(state, lambda s: s == "delivered") == "delivered"
    code, output = await _cli(stack, key, "status", message_id)
    assert code == 0
    assert "cli@inbox.example" in output
    assert "delivered" in output

    body = tmp_path / "mail.json"
    body.write_text(
        json.dumps(
            {
                "personalizations": [{"to": [{"email": "file@inbox.example"}]}],
                "from": {"email": f"ops@{SENDER_DOMAIN}"},
                "subject": "From a file",
                "content": [{"type": "text/plain", "value": "hi"}],
            }
        )
    )
    code, output = await _cli(stack, key, "send", "--file", str(body))
    assert code == 0, output
    assert len(output.strip()) == 32


async def test_cli_errors_are_one_sentence_with_exit_codes(stack: Settings) -> None:
    _tenant, key = await new_tenant(stack, "cli-err")
    code, output = await _cli(stack, None, "status", "abc")
    assert code == 1
    assert "no API key" in output
    code, output = await _cli(stack, "pw_wrong", "status", "abc")
    assert code == 1
    assert "(401)" in output
    code, output = await _cli(stack, key, "status", "not-a-message")
    assert code == 1
    assert "no message not-a-message" in output
    code, output = await _cli(stack, key, "send", "--to", "a@b.example")
    assert code == 2
    assert "--subject" in output
    code, output = await _cli(
        stack, key, "status", "abc", "--url", f"http://127.0.0.1:{free_port()}"
    )
    assert code == 1
    assert "cannot reach the API" in output


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


async def test_verify_a_file_and_resume(stack: Settings, tmp_path: Path) -> None:
    _tenant, key = await new_tenant(stack, "cli-verify")
    source = tmp_path / "list.csv"
    source.write_text("name,Email\nA,alice@normal.example\nB,x@nullmx.example\nC,not-an-address\n")
    out = tmp_path / "results.csv"
    code, output = await _cli(stack, key, "verify", str(source), "--out", str(out), "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["verified"] == 3
    assert summary["skipped"] == 0
    rows = _rows(out)
    assert list(rows[0]) == list(COLUMNS)
    verdicts = {r["email"]: r["is_reachable"] for r in rows}
    assert verdicts["x@nullmx.example"] == "invalid"
    assert verdicts["not-an-address"] == "invalid"
    assert summary["counts"]["invalid"] >= 2

    # a second run, with two more addresses: only those are verified
    with source.open("a") as f:
        f.write("D,bob@normal.example\nE,joe@normal.example\n")
    code, output = await _cli(
        stack, key, "verify", str(source), "--out", str(out), "--json", "--chunk-size", "1"
    )
    assert code == 0, output
    again = json.loads(output)
    assert (again["verified"], again["skipped"]) == (2, 3)
    assert len(_rows(out)) == 5
    assert len({r["email"] for r in _rows(out)}) == 5


async def test_verify_json_lines_and_bad_files(stack: Settings, tmp_path: Path) -> None:
    _tenant, key = await new_tenant(stack, "cli-jsonl")
    source = tmp_path / "list.jsonl"
    source.write_text('{"email": "info@normal.example"}\n"x@nullmx.example"\n')
    code, output = await _cli(stack, key, "verify", str(source))
    assert code == 0, output
    assert "2 verified" in output
    assert len(_rows(tmp_path / "list.jsonl.results.csv")) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("name,phone\nA,1\n")
    code, output = await _cli(stack, key, "verify", str(bad))
    assert code == 2
    assert "no email column" in output
    code, output = await _cli(stack, key, "verify", str(tmp_path / "missing.csv"))
    assert code == 2
    assert "cannot read" in output


async def test_operator_commands_print_json(stack: Settings) -> None:
    env = {
        "POSTWIRE_DATABASE_URL": stack.dsn,
        "POSTWIRE_KAFKA_BOOTSTRAP": stack.bootstrap,
        "POSTWIRE_TOPIC_PREFIX": stack.topic_prefix,
    }

    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, list(args), env=env)
        return result.exit_code, result.output

    code, output = await asyncio.to_thread(invoke, "topics", "--json")
    assert code == 0, output
    topics = {t["topic"]: t for t in json.loads(output)}
    assert topics[stack.topics.requests]["created"] is False
    assert topics[stack.topics.suppressions]["compacted"] is True
    code, output = await asyncio.to_thread(invoke, "db", "migrate", "--json")
    assert code == 0, output
    assert json.loads(output) == {"applied": []}
