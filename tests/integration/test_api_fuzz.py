"""Fuzz the API from its own OpenAPI spec with schemathesis: whatever arrives, no 5xx.

Runs a second ingress in this process, on the session's Kafka and PostgreSQL, with a rate limit
high enough that the fuzzer reaches the handlers instead of collecting 429s.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from streams.api.server import ROUTES, Ingress
from streams.settings import Settings
from tests.conftest import free_port
from tests.integration.helpers import new_tenant

pytestmark = pytest.mark.integration

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture
async def fuzz_target(stack: Settings) -> AsyncIterator[str]:
    settings = stack.model_copy(
        update={"api_port": free_port(), "api_rate": 100_000.0, "api_burst": 100_000}
    )
    runner = web.AppRunner(Ingress(settings).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.api_host, settings.api_port).start()
    yield settings.api_base
    await runner.cleanup()


async def test_no_input_gets_a_server_error(
    stack: Settings, fuzz_target: str, tmp_path: Path
) -> None:
    _tenant, key = await new_tenant(stack, "fuzz")
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        f"{fuzz_target}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--seed",
        "20261123",
        "--generation-database",
        "none",
        "--phases",
        "examples,coverage,fuzzing",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await proc.communicate()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", text)
    assert selected is not None, text[-3000:]
    operations = int(selected[1])
    # every API route is in the spec, and every operation was exercised
    assert operations >= len(ROUTES)
    assert f"Tested: {operations}" in text, text[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", text)
    assert cases is not None, text[-3000:]
    assert cases[1] == cases[2]
    assert int(cases[1]) > 20 * operations
