"""`postwire sender ...` and `postwire dkim ...` against the session's PostgreSQL and the
loopback DNS: verification by a TXT token (missing, wrong, right), the sharing rule (each tenant
proves a shared domain by DNS; the operator vouches only for an unclaimed one unless --shared),
key import and rotation, and what the directory opens for signing."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from streams.cli.main import app
from streams.db.dkim_keys import list_dkim_keys
from streams.db.tenants import load_directory
from streams.deliver.dkim import keygen
from streams.settings import Settings
from tests.integration.helpers import new_tenant
from tests.peers.world import World

pytestmark = pytest.mark.integration


def _invoke(settings: Settings, *args: str) -> tuple[int, str]:
    env = {
        "POSTWIRE_DATABASE_URL": settings.dsn,
        # the stack's data dir holds the server secret the workers open the keys with
        "POSTWIRE_DATA_DIR": str(settings.data_dir),
        "POSTWIRE_DNS_NAMESERVERS": settings.dns_nameservers,
        "POSTWIRE_DNS_TIMEOUT": "0.5",
        "POSTWIRE_DNS_TRIES": "1",
    }
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


async def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    return await asyncio.to_thread(_invoke, settings, *args)


def _domain(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}.example"


async def test_a_domain_is_verified_by_its_dns_token(
    stack: Settings, world: World, db: asyncpg.Connection
) -> None:
    domain = _domain("cli")
    tenant, _ = await new_tenant(stack, "cli-sender", senders=())
    code, added = await _cli(
        stack, "sender", "add", "--tenant", tenant, domain, "--dkim", "ed25519"
    )
    assert code == 0, added
    assert "not verified yet" in added
    assert "PRIVATE" not in added
    code, output = await _cli(stack, "sender", "list", "--tenant", tenant, "--json")
    assert code == 0, output
    [doc] = json.loads(output)
    verification, key = doc["verification_record"], doc["dkim_record"]
    assert (doc["identity"], doc["verified"]) == (domain, False)
    assert verification["host"] == f"_postwire-verification.{domain}"
    assert verification["value"].startswith("postwire-verification=")
    assert key["value"].startswith("v=DKIM1; k=ed25519; p=")
    # the add printed both records to publish, each on one line, ready for a zone file
    lines = [line.strip() for line in added.splitlines()]
    for record in (verification, key):
        assert f'{record["host"]}  IN TXT  "{record["value"]}"' in lines, added

    code, output = await _cli(stack, "sender", "verify", "--tenant", tenant, domain)
    assert code == 1, output
    assert f'no TXT record "{verification["value"]}" at {verification["host"]}' in output
    assert f"no DKIM key record at {key['host']}" in output

    world.dns.zone.txt[verification["host"]] = "postwire-verification=someone-elses-token"
    code, output = await _cli(stack, "sender", "verify", "--tenant", tenant, domain)
    assert code == 1, output
    assert "holds another token" in output

    world.dns.zone.txt[verification["host"]] = ["v=spf1 -all", verification["value"]]
    world.dns.zone.txt[key["host"]] = key["value"]
    code, output = await _cli(stack, "sender", "verify", "--tenant", tenant, domain)
    assert code == 0, output
    assert "verified (dns)" in output
    assert "dkim: ok" in output
    row = await db.fetchrow(
        "SELECT verified_by, verified_at FROM sender_identities WHERE tenant_id = $1", tenant
    )
    assert row["verified_by"] == "dns"
    assert row["verified_at"] is not None

    code, output = await _cli(stack, "sender", "list", "--tenant", tenant)
    assert code == 0, output
    assert "1 senders, 1 verified" in output

    code, output = await _cli(stack, "sender", "remove", "--tenant", tenant, domain)
    assert code == 0, output
    assert await db.fetchval("SELECT count(*) FROM dkim_keys WHERE tenant_id = $1", tenant) == 0
    code, output = await _cli(stack, "sender", "verify", "--tenant", tenant, domain)
    assert code == 1
    assert "is not a sender identity" in output


async def test_a_domain_is_shared_by_dns_proof_or_the_operators_explicit_word(
    stack: Settings, world: World, db: asyncpg.Connection
) -> None:
    domain = _domain("shared")
    first, _ = await new_tenant(stack, "share-a", senders=())
    second, _ = await new_tenant(stack, "share-b", senders=())
    third, _ = await new_tenant(stack, "share-c", senders=())
    values = []
    for tenant in (first, second):
        code, output = await _cli(stack, "sender", "add", "--tenant", tenant, domain, "--json")
        assert code == 0, output
        values.append(json.loads(output)["verification_record"])
    host = values[0]["host"]
    assert values[0]["value"] != values[1]["value"]  # each tenant proves it with its own token
    world.dns.zone.txt[host] = [v["value"] for v in values]
    for tenant in (first, second):
        code, output = await _cli(stack, "sender", "verify", "--tenant", tenant, domain)
        assert "verified (dns)" in output, output

    code, output = await _cli(stack, "sender", "add", "--tenant", third, domain, "--verified")
    assert code == 1
    assert f"{domain} is a verified sender of tenant" in output
    assert (
        await db.fetchval("SELECT count(*) FROM sender_identities WHERE tenant_id = $1", third) == 0
    )  # all or nothing: no identity, no key
    code, output = await _cli(
        stack, "sender", "add", "--tenant", third, domain, "--verified", "--shared"
    )
    assert code == 0, output
    assert "verified by the operator" in output
    code, output = await _cli(stack, "sender", "add", "--tenant", third, domain, "--shared")
    assert code == 2  # --shared is the operator's word: it goes with --verified

    # each tenant signs the shared domain with a key of its own, never another's
    directory = await load_directory(db, stack.database.tenant_defaults, stack.secret)
    keys = [directory.dkim_key(t, domain) for t in (first, second, third)]
    assert all(k is not None for k in keys)
    assert len({k.selector for k in keys if k}) == 3
    assert len({k.pem for k in keys if k}) == 3
    assert directory.verified_sender(third, f"news@{domain}")


async def test_dkim_keys_are_imported_and_rotated_per_tenant(
    stack: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant, _ = await new_tenant(stack, "dkim-cli", senders=())
    domain = _domain("keys")
    code, output = await _cli(
        stack, "sender", "add", "--tenant", tenant, domain, "--verified", "--dkim", "none"
    )
    assert code == 0, output
    code, output = await _cli(
        stack, "sender", "add", "--tenant", tenant, f"Solo@{_domain('one')}", "--verified"
    )
    assert code == 0, output
    pem, txt = keygen("rsa")
    old_file = tmp_path / f"old1._domainkey.{domain}.pem"
    old_file.write_bytes(pem)
    code, output = await _cli(stack, "dkim", "import", "--tenant", tenant, str(old_file))
    assert code == 0, output
    assert txt in output
    [imported] = await list_dkim_keys(db, tenant)
    assert (imported.selector, imported.algorithm, imported.public_txt) == (
        "old1",
        "rsa-sha256",
        txt,
    )

    code, output = await _cli(
        stack,
        "dkim",
        "keygen",
        "--tenant",
        tenant,
        "--domain",
        domain,
        "--selector",
        "new2",
        "--algorithm",
        "ed25519",
    )
    assert code == 0, output
    assert "new2._domainkey." in output
    keys = {k.selector: k.active for k in await list_dkim_keys(db, tenant)}
    assert keys == {"new2": True, "old1": False}
    directory = await load_directory(db, stack.database.tenant_defaults, stack.secret)
    active = directory.dkim_key(tenant, domain)
    assert active is not None
    assert (active.selector, active.algorithm) == ("new2", "ed25519-sha256")
    # an address identity has no key; a key needs one of the tenant's domains
    stray = tmp_path / "s1._domainkey.nobody.example.pem"
    stray.write_bytes(pem)
    code, output = await _cli(stack, "dkim", "import", "--tenant", tenant, str(stray))
    assert code == 1
    assert "is not a sender identity" in output
    unnamed = tmp_path / "key.pem"
    unnamed.write_bytes(pem)
    code, output = await _cli(stack, "dkim", "import", "--tenant", tenant, str(unnamed))
    assert code == 2
    assert "or give --domain and --selector" in " ".join(output.split())
