"""`postwire webhooks set|show|test|failed|replay`: a tenant's event webhook, as the operator
sees it (the same settings as SendGrid's API), and the batches it never accepted."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from streams.cli.common import fail, out, run, settings, with_db

__all__ = ["webhooks_app"]

webhooks_app = typer.Typer(
    help="Event webhooks: a tenant's endpoint (SendGrid's settings) and its failed batches.",
    no_args_is_help=True,
)

TenantOpt = Annotated[str, typer.Option("--tenant", help="The tenant whose webhook it is.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _print_settings(view: dict[str, Any], public_key: str | None, as_json: bool) -> None:
    if as_json:
        out.print_json(orjson.dumps({**view, "public_key": public_key or ""}).decode())
        return
    state = "[green]enabled[/]" if view["enabled"] else "[yellow]disabled[/]"
    out.print(f"{state}  {view['url'] or '(no url)'}")
    on = [name for name, value in view.items() if value is True and name != "enabled"]
    out.print("events: " + (", ".join(on) if on else "none"))
    if public_key:
        out.print("signed; public key (ECDSA P-256, base64 DER):")
        out.print(public_key, markup=False, highlight=False)
    else:
        out.print("not signed")


@webhooks_app.command("set")
def webhooks_set(
    tenant: TenantOpt,
    url: Annotated[str | None, typer.Option(help="The endpoint (http or https).")] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Post events, or stop.")
    ] = None,
    events: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated SendGrid event settings to post (processed, dropped, deferred,"
            " delivered, bounce, open, click, unsubscribe, spam_report), or 'all'."
        ),
    ] = None,
    signed: Annotated[
        bool | None, typer.Option("--signed/--unsigned", help="Sign posts (ECDSA P-256).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a tenant's webhook; what is not given stays as it is."""
    from streams.db.webhooks import get_endpoint, update_endpoint
    from streams.webhooks.endpoints import set_signing, settings_view
    from streams.webhooks.mapping import EVENT_SETTINGS, SETTING_NAMES

    chosen: set[str] | None = None
    if events is not None:
        names = [e.strip() for e in events.split(",") if e.strip()]
        chosen = set(EVENT_SETTINGS) if names == ["all"] else set(names)
        unknown = chosen - set(SETTING_NAMES)
        if unknown:
            raise fail(f"--events: unknown {', '.join(sorted(unknown))}", 2)
    if url is not None and url and not url.startswith(("http://", "https://")):
        raise fail("--url must be an http or https URL", 2)
    secret = settings().secret

    async def work(conn: Any) -> tuple[dict[str, Any], str | None]:
        async with conn.transaction():
            current = await get_endpoint(conn, tenant)
            if (enabled if enabled is not None else current.enabled) and not (url or current.url):
                raise fail("an enabled webhook needs --url", 2)
            row = await update_endpoint(conn, tenant, enabled=enabled, url=url, events=chosen)
            if signed is not None:
                row = await set_signing(conn, secret, tenant, signed)
        return settings_view(row), row.public_key if row.signed else None

    view, key = run(with_db(work))
    _print_settings(view, key, as_json)


@webhooks_app.command("show")
def webhooks_show(tenant: TenantOpt, as_json: JsonOpt = False) -> None:
    """A tenant's webhook settings and, when posts are signed, the public key."""
    from streams.db.webhooks import get_endpoint
    from streams.webhooks.endpoints import settings_view

    async def work(conn: Any) -> tuple[dict[str, Any], str | None]:
        row = await get_endpoint(conn, tenant)
        return settings_view(row), row.public_key if row.signed else None

    view, key = run(with_db(work))
    _print_settings(view, key, as_json)


@webhooks_app.command("test")
def webhooks_test(
    tenant: TenantOpt,
    url: Annotated[str | None, typer.Option(help="Post here instead of the url set.")] = None,
) -> None:
    """Post SendGrid's test event (signed as the tenant's posts are) and say how it went."""
    from streams.db.webhooks import get_endpoint
    from streams.webhooks.endpoints import post_sample
    from streams.webhooks.post import PostResult

    s = settings()

    async def work(conn: Any) -> PostResult | None:
        row = await get_endpoint(conn, tenant)
        target = url or row.url
        if not target:
            return None
        hooks = s.webhooks
        return await post_sample(conn, s.secret, row, target, hooks.timeout, hooks.allow_private)

    result = run(with_db(work))
    if result is None:
        raise fail("no --url given and the tenant has none set", 2)
    if not result.ok:
        raise fail(f"the endpoint did not accept the test post: {result.reason}")
    out.print(f"accepted (HTTP {result.status}) in {result.seconds * 1000:.0f} ms")


@webhooks_app.command("failed")
def webhooks_failed(
    tenant: TenantOpt,
    include_replayed: Annotated[
        bool, typer.Option("--all", help="Also the batches already replayed.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The tenant's dead-lettered batches: given up on after the retry window."""
    from streams.db.webhooks import Failure, failures

    async def work(conn: Any) -> list[Failure]:
        return await failures(conn, tenant, pending_only=not include_replayed, limit=limit)

    found = run(with_db(work))
    if as_json:
        rows = [
            {
                "batch_id": f.batch_id,
                "events": f.events,
                "attempts": f.attempts,
                "reason": f.reason,
                "first_at": f.first_at.isoformat(),
                "failed_at": f.failed_at.isoformat(),
                "replayed_at": f.replayed_at.isoformat() if f.replayed_at else None,
            }
            for f in found
        ]
        out.print_json(orjson.dumps(rows).decode())
        return
    table = Table("batch", "events", "attempts", "failed at", "reason", "replayed")
    for f in found:
        table.add_row(
            f.batch_id,
            str(f.events),
            str(f.attempts),
            f.failed_at.isoformat(timespec="seconds"),
            f.reason,
            f.replayed_at.isoformat(timespec="seconds") if f.replayed_at else "",
        )
    out.print(table)
    out.print(f"{len(found)} batch(es)")


@webhooks_app.command("replay")
def webhooks_replay(
    tenant: TenantOpt,
    batch: Annotated[
        list[str] | None,
        typer.Argument(help="Batch ids (from `failed`); default all pending."),
    ] = None,
) -> None:
    """Send dead-lettered batches again: the same events (and sg_event_ids), a new retry window."""
    from streams.db.webhooks import failures, mark_replayed

    s = settings()

    async def work(conn: Any) -> int:
        pending = await failures(conn, tenant, pending_only=True, limit=100_000)
        chosen = [f for f in pending if not batch or f.batch_id in batch]
        missing = set(batch or ()) - {f.batch_id for f in chosen}
        if missing:
            raise fail(f"no pending failed batch {', '.join(sorted(missing))} of {tenant}", 2)
        if not chosen:
            return 0
        await _publish(s, chosen)
        return await mark_replayed(conn, tenant, [f.batch_id for f in chosen], _now())

    count = run(with_db(work))
    out.print(f"{count} batch(es) handed back to the webhook stage")


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def _publish(s: Any, chosen: list[Any]) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from streams.contract.codec import default_codec
    from streams.errors import StackError
    from streams.kafka.config import client_options
    from streams.kafka.connect import start_client
    from streams.webhooks.endpoints import replayed

    options = client_options(s.kafka)
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True)
    codec, now = default_codec(), _now()
    try:
        await start_client(producer, options)
        futures = [
            await producer.send(
                s.topics.webhooks,
                codec.encode("WebhookBatch", replayed(f, now)),
                key=f.tenant_id.encode(),
            )
            for f in chosen
        ]
        for future in futures:
            await future
    except KafkaError as exc:
        raise StackError(f"cannot publish to {s.topics.webhooks}: {exc}") from exc
    finally:
        await producer.stop()
