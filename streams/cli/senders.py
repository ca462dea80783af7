"""`postwire sender add|verify|list|remove` and `postwire dkim keygen|import`: the domains and
addresses a tenant sends from, and the DKIM keys that sign for it (the work is in
streams/deliver/senders.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.table import Table

from streams.cli.common import err, fail, out, run, settings, with_db
from streams.errors import DkimKeyError

if TYPE_CHECKING:
    from streams.deliver.dkim import KeyType
    from streams.deliver.senders import Sender, Validation

__all__ = ["dkim_app", "sender_app"]

sender_app = typer.Typer(
    help="Sender identities: the domains and addresses a tenant may send from.",
    no_args_is_help=True,
)
dkim_app = typer.Typer(
    help="DKIM keys of a tenant's domains (sealed in PostgreSQL).", no_args_is_help=True
)

TenantOpt = Annotated[str, typer.Option("--tenant", help="The tenant the sender belongs to.")]
IdentityArg = Annotated[
    str, typer.Argument(help="A domain (acme.example) or one address (news@acme.example).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
SelectorOpt = Annotated[
    str | None, typer.Option(help="The DKIM selector; default a random pw<hex>.")
]


def _key_type(name: str, option: str) -> KeyType:
    from streams.deliver.dkim import key_type

    try:
        return key_type(name)
    except DkimKeyError as exc:
        raise fail(f"{option}: {exc}", 2) from None


def _record(host: str, value: str) -> None:
    # `out` soft-wraps: a DKIM key (~400 characters) stays one line, copied into a zone file whole
    out.print(f'  {host}  IN TXT  "{value}"', markup=False, highlight=False)


def _print_records(sender: Sender) -> None:
    identity, key = sender.identity, sender.key
    records = (
        [] if identity.verified else [(identity.verification_host, identity.verification_value)]
    )
    if key is not None:
        records.append((key.record_name, key.public_txt))
    if records:
        out.print("publish in DNS:")
    for host, value in records:
        _record(host, value)


@sender_app.command("add")
def sender_add(
    tenant: TenantOpt,
    identity: IdentityArg,
    dkim: Annotated[
        str, typer.Option(help="A domain's DKIM key: rsa (2048 bits), ed25519 or none.")
    ] = "rsa",
    selector: SelectorOpt = None,
    verified: Annotated[
        bool, typer.Option("--verified", help="The operator vouches for it: no DNS proof.")
    ] = False,
    shared: Annotated[
        bool,
        typer.Option(
            "--shared",
            help="With --verified: also when another tenant has verified the domain (one the"
            " operator owns and lends to several tenants).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add a sender identity; prints the TXT records to publish (the verification token and,
    for a domain, the new DKIM key)."""
    from streams.deliver.senders import add_sender

    if shared and not verified:
        raise fail("--shared goes with --verified", 2)
    kind = None if dkim == "none" else _key_type(dkim, "--dkim")

    async def work(conn: Any) -> Sender:
        return await add_sender(
            conn,
            settings().secret,
            tenant,
            identity,
            dkim=kind,
            selector=selector,
            operator=verified,
            shared=shared,
        )

    sender = run(with_db(work))
    if as_json:
        out.print_json(orjson.dumps(sender.to_json()).decode())
        return
    how = "verified by the operator" if sender.identity.verified else "not verified yet"
    out.print(f"sender {sender.identity.name} added for {tenant} ({how})")
    _print_records(sender)
    if not sender.identity.verified:
        out.print(f"then: postwire sender verify --tenant {tenant} {sender.identity.name}")


def _validation_lines(validation: Validation) -> list[str]:
    lines = []
    for name, check in (("verification", validation.verification), ("dkim", validation.dkim)):
        if check is not None:
            lines.append(f"  {name}: {'ok' if check.valid else check.reason}")
    return lines


@sender_app.command("verify")
def sender_verify(tenant: TenantOpt, identity: IdentityArg, as_json: JsonOpt = False) -> None:
    """Look the verification TXT record (and the DKIM key record) up through
    POSTWIRE_DNS_NAMESERVERS; exit 1 while the identity is not verified."""
    from streams.deliver.senders import check_records, find_sender, record_validation
    from streams.mail.dns import MxResolver

    s = settings()

    async def work() -> tuple[Sender, Validation]:
        sender = await with_db(lambda conn: find_sender(conn, tenant, identity))
        resolver = MxResolver(s.nameservers, s.dns_timeout, s.dns_tries)
        validation = await check_records(resolver, sender)
        sender = await with_db(lambda conn: record_validation(conn, sender, validation))
        return sender, validation

    sender, validation = run(work())
    if as_json:
        doc = sender.to_json()
        doc["checks"] = {
            name: None if c is None else {"valid": c.valid, "reason": c.reason}
            for name, c in (("verification", validation.verification), ("dkim", validation.dkim))
        }
        out.print_json(orjson.dumps(doc).decode())
    else:
        state = (
            f"verified ({sender.identity.verified_by})"
            if sender.identity.verified
            else "not verified"
        )
        out.print(f"{sender.identity.name} of {tenant}: {state}")
        for line in _validation_lines(validation):
            out.print(line, markup=False, highlight=False)
    if not sender.identity.verified:
        raise typer.Exit(1)


@sender_app.command("list")
def sender_list(tenant: TenantOpt, as_json: JsonOpt = False) -> None:
    """A tenant's sender identities, how each was verified, and its DKIM selector."""
    from streams.deliver.senders import list_senders

    async def work(conn: Any) -> list[Sender]:
        return await list_senders(conn, tenant)

    senders = run(with_db(work))
    if as_json:
        out.print_json(orjson.dumps([s.to_json() for s in senders]).decode())
        return
    grid = Table("id", "identity", "verified", "dkim selector", "dkim published")
    for sender in senders:
        identity, key = sender.identity, sender.key
        when = f"{identity.verified_at:%Y-%m-%d %H:%M}" if identity.verified_at else ""
        grid.add_row(
            str(identity.identity_id),
            identity.name,
            f"{identity.verified_by} {when}" if identity.verified else "no",
            key.selector if key else "-",
            ("yes" if key.published_at else "not seen") if key else "-",
        )
    out.print(grid)
    out.print(f"{len(senders)} senders, {sum(s.identity.verified for s in senders)} verified")


@sender_app.command("remove")
def sender_remove(tenant: TenantOpt, identity: IdentityArg) -> None:
    """Remove a sender identity (a domain's DKIM keys go with it): its mail is refused at the
    ingress and the gate, and signed no more, from the next directory refresh."""
    from streams.db.senders import remove_identity
    from streams.deliver.senders import find_sender

    async def work(conn: Any) -> str:
        sender = await find_sender(conn, tenant, identity)
        await remove_identity(conn, sender.identity)
        return sender.identity.name

    name = run(with_db(work))
    out.print(f"removed {name} from {tenant}'s senders")


@dkim_app.command("keygen")
def dkim_keygen(
    tenant: TenantOpt,
    domain: Annotated[str, typer.Option(help="One of the tenant's sender domains.")],
    selector: SelectorOpt = None,
    algorithm: Annotated[str, typer.Option(help="rsa (2048 bits) or ed25519.")] = "rsa",
) -> None:
    """A new key for a tenant's domain (rotation): it signs from the next directory refresh,
    the old one is kept inactive. Prints the TXT record to publish."""
    from streams.db.dkim_keys import DkimKeyInfo
    from streams.deliver.senders import rotate_key

    kind = _key_type(algorithm, "--algorithm")

    async def work(conn: Any) -> DkimKeyInfo:
        return await rotate_key(conn, settings().secret, tenant, domain, kind, selector)

    key = run(with_db(work))
    out.print(f"new DKIM key {key.selector} of {tenant} for {key.domain}; publish in DNS:")
    _record(key.record_name, key.public_txt)


@dkim_app.command("import")
def dkim_import(
    tenant: TenantOpt,
    file: Annotated[Path, typer.Argument(help="An unencrypted PEM key (RSA or Ed25519).")],
    domain: Annotated[
        str | None, typer.Option(help="Default: from a <selector>._domainkey.<domain>.pem name.")
    ] = None,
    selector: SelectorOpt = None,
) -> None:
    """Import an existing key (e.g. a file of the old POSTWIRE_DKIM_KEYS_DIR) as the key of one
    of the tenant's domains; it is sealed in PostgreSQL, delete the file afterwards."""
    from streams.db.dkim_keys import DkimKeyInfo
    from streams.deliver.dkim import parse_key_file_name
    from streams.deliver.senders import import_key

    if domain is None or selector is None:
        try:
            named_selector, named_domain = parse_key_file_name(file.name)
        except DkimKeyError as exc:
            raise fail(f"{exc}; or give --domain and --selector", 2) from None
        domain, selector = domain or named_domain, selector or named_selector
    try:
        pem = file.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc}", 2) from None
    chosen_domain, chosen_selector = domain, selector

    async def work(conn: Any) -> DkimKeyInfo:
        secret = settings().secret
        return await import_key(conn, secret, tenant, chosen_domain, chosen_selector, pem)

    key = run(with_db(work))
    out.print(f"imported {file} as DKIM key {key.selector} of {tenant} for {key.domain}")
    _record(key.record_name, key.public_txt)
    err.print(f"[dim]the key is sealed in PostgreSQL now: delete {file}[/]")
