"""`postwire keys create|list|revoke`: tenants' API keys (the work is in streams/db/keys.py)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from streams.cli.common import err, fail, out, run, settings, with_db
from streams.errors import UnknownScopeError

__all__ = ["create", "keys_app", "print_new_key", "revoke"]

keys_app = typer.Typer(
    help="API keys: create (shown once), list, revoke. The key is never stored in plaintext.",
    no_args_is_help=True,
)

TenantOpt = Annotated[str, typer.Option("--tenant", help="The tenant the keys belong to.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def print_new_key(key_id: str, key: str) -> None:
    out.print(f"api key {key_id}: {key}", markup=False, highlight=False)
    err.print(
        "[dim]stored are its sha256 and a copy sealed under the server secret: keep the key now,"
        " it cannot be shown again (direct Kafka producers sign with it and its id)[/]"
    )


def create(tenant: str, scopes: str = "send,verify,read", as_json: bool = False) -> None:
    from streams.db.keys import create_key, parse_scopes

    try:
        chosen = parse_scopes(scopes)
    except UnknownScopeError as exc:
        raise fail(str(exc), 2) from None

    secret = settings().secret

    async def work(conn: Any) -> tuple[str, str]:
        return await create_key(conn, tenant, chosen, secret=secret)

    key_id, key = run(with_db(work))
    if as_json:
        doc = {"key_id": key_id, "tenant": tenant, "scopes": list(chosen), "key": key}
        out.print_json(orjson.dumps(doc).decode())
        return
    print_new_key(key_id, key)


def revoke(key_id: str) -> None:
    from streams.db.keys import revoke_key

    async def work(conn: Any) -> object:
        return await revoke_key(conn, key_id)

    run(with_db(work))
    out.print(f"revoked {key_id}; the gate and the ingress refuse it from their next refresh")


@keys_app.command("create")
def keys_create(
    tenant: TenantOpt,
    scopes: Annotated[
        str,
        typer.Option(help="Comma-separated: send (send, track), verify (verify, validate), read."),
    ] = "send,verify,read",
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print it once, with its id (direct producers sign with both)."""
    create(tenant, scopes, as_json)


@keys_app.command("list")
def keys_list(tenant: TenantOpt, as_json: JsonOpt = False) -> None:
    """List a tenant's keys: id, scopes, created, revoked (never the key itself)."""
    from streams.db.keys import KeyInfo, list_keys

    async def work(conn: Any) -> list[KeyInfo]:
        return await list_keys(conn, tenant)

    keys = run(with_db(work))
    if as_json:
        out.print_json(orjson.dumps([k.to_json() for k in keys]).decode())
        return
    grid = Table("key id", "scopes", "created", "revoked")
    for k in keys:
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M:%S}" if k.revoked_at else "-"
        grid.add_row(k.key_id, ",".join(k.scopes), f"{k.created_at:%Y-%m-%d %H:%M:%S}", revoked)
    out.print(grid)
    active = sum(1 for k in keys if k.revoked_at is None)
    out.print(f"{len(keys)} keys, {active} active (times in UTC)")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (k_...), as `keys list` shows it.")],
) -> None:
    """Revoke a key; the gate and the HTTP ingress refuse it within POSTWIRE_DIRECTORY_REFRESH
    seconds (their directory refresh)."""
    revoke(key_id)
