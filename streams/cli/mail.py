"""`postwire queue`, `postwire suppression`, `postwire template`: the operator's mail commands."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from streams.cli.common import fail, out, run, settings, with_db
from streams.contract.build import make_suppression
from streams.contract.records import Suppression

__all__ = ["queue_app", "suppression_app", "template_app"]

queue_app = typer.Typer(
    help="The mail queue, like Postfix: list (mailq), flush, hold, release, delete; the sites "
    "shaping holds (sites, resume-site).",
    no_args_is_help=True,
)
suppression_app = typer.Typer(help="Per-tenant suppression lists.", no_args_is_help=True)

TaskOpt = Annotated[str | None, typer.Option("--task", help="One task (message + recipient).")]
MessageOpt = Annotated[str | None, typer.Option("--message", help="Every recipient of a message.")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Everything of a tenant.")]
DomainOpt = Annotated[str | None, typer.Option("--domain", help="Everything to a domain.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Everything (Postfix's ALL).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _command(
    action: str,
    task: str | None,
    message: str | None,
    tenant: str | None,
    domain: str | None,
    everything: bool,
) -> None:
    from streams.deliver.control import Command, Selector
    from streams.deliver.queue import publish_command

    try:
        selector = Selector(task, message, tenant, domain, everything)
    except ValueError as exc:
        raise fail(f"{exc} (--task, --message, --tenant, --domain or --all)", 2) from None
    command = Command(action, selector, int(time.time() * 1000))  # type: ignore[arg-type]
    run(publish_command(settings().kafka, command))
    out.print(f"{action} {selector.describe()}: sent to the workers (command {command.command_id})")


def _queue_command(action: str, doc: str) -> None:
    """Register ``postwire queue <action>`` with the shared selector options."""

    def command(
        task: TaskOpt = None,
        message: MessageOpt = None,
        tenant: TenantOpt = None,
        domain: DomainOpt = None,
        all_: AllOpt = False,
    ) -> None:
        _command(action, task, message, tenant, domain, all_)

    command.__doc__ = doc
    queue_app.command(action)(command)


_queue_command(
    "hold", "Park matching mail instead of delivering it (postsuper -h); a domain hold pauses it."
)
_queue_command(
    "release", "Lift holds with this selector and re-queue the held mail it matches (postsuper -H)."
)
_queue_command(
    "delete",
    "Drop matching queued mail (postsuper -d); each gets a `dropped` event, reason deleted.",
)
_queue_command(
    "flush", "Retry matching deferred mail now instead of at its next attempt (postqueue -f)."
)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@queue_app.command("list")
def queue_list(tenant: TenantOpt = None, domain: DomainOpt = None, json: JsonOpt = False) -> None:
    """List deferred and held mail (mailq)."""
    from streams.kafka.read import read_compacted

    s = settings()
    entries: list[dict[str, Any]] = list(run(read_compacted(s.kafka, s.topics.queue)).values())
    entries = [
        e
        for e in entries
        if (tenant is None or e["tenant"] == tenant)
        and (domain is None or e["domain"] == domain.lower())
    ]
    entries.sort(key=lambda e: (e["state"], e.get("next_attempt_ms") or 0))
    if json:
        out.print_json(
            orjson.dumps([{k: v for k, v in e.items() if k != "task"} for e in entries]).decode()
        )
        return
    grid = Table("task", "state", "tenant", "recipient", "attempt", "next attempt", "reason")
    for e in entries:
        grid.add_row(
            e["task_id"][:12],
            e["state"],
            e["tenant"],
            e["recipient"],
            str(e["attempt"]),
            _when(e.get("next_attempt_ms")),
            e.get("reason") or "",
        )
    out.print(grid)
    held = sum(1 for e in entries if e["state"] == "held")
    out.print(f"{len(entries)} queued: {len(entries) - held} deferred, {held} held")


@queue_app.command("sites")
def queue_sites(
    all_: Annotated[
        bool, typer.Option("--all", help="Also sites whose suspension or cut has ended.")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Destination sites shaping holds: suspended or slowed, by which rule, after which reply,
    until when."""
    from streams.deliver.shaping_feed import read_sites

    now = time.time()
    states = [st for st in run(read_sites(settings().kafka)) if all_ or st.active(now)]
    states.sort(key=lambda st: (-max(st.suspended_until, st.slowed_until), st.site))
    if json:
        out.print_json(orjson.dumps([st.to_json() for st in states]).decode())
        return
    grid = Table("site", "state", "rule", "until", "reply")
    for st in states:
        if st.suspended(now) or (all_ and st.suspended_until):
            shown = "suspended" if st.suspended(now) else "suspended (ended)"
            until = _when(int(st.suspended_until * 1000))
            grid.add_row(st.site, shown, st.suspend_rule, until, st.suspend_reply)
        if st.slowed(now) or (all_ and st.slowed_until):
            shown = f"slowed x{st.factor:g}" + ("" if st.slowed(now) else " (ended)")
            until = _when(int(st.slowed_until * 1000))
            grid.add_row(st.site, shown, st.slow_rule, until, st.slow_reply)
    out.print(grid)
    suspended = sum(1 for st in states if st.suspended(now))
    slowed = sum(1 for st in states if st.slowed(now))
    out.print(f"{suspended} suspended, {slowed} slowed")


@queue_app.command("resume-site")
def queue_resume_site(
    site: Annotated[str, typer.Argument(help="The site, as `postwire queue sites` names it.")],
) -> None:
    """Lift a site's suspension and rate cut in every worker now, before they end by themselves.
    Mail already put back keeps its time; new mail goes at once."""
    from streams.deliver.shaping import normalise_site
    from streams.deliver.shaping_feed import publish_site, read_sites

    s = settings()
    name = normalise_site(site)
    known = {st.site for st in run(read_sites(s.kafka))}
    if name not in known:
        raise fail(f"shaping holds no site {name!r}; `postwire queue sites --all` lists them", 1)
    run(publish_site(s.kafka, name, None))
    out.print(f"{name}: resumed in every worker")


GroupOpt = Annotated[
    int | None,
    typer.Option(
        "--group",
        help="A suppression group id of the tenant (`/v3/asm/groups`): that group's list only.",
    ),
]


def _check_group(tenant: str, group: int | None) -> None:
    """Fail (exit 1) unless ``group`` is None or one of the tenant's suppression groups."""
    if group is None:
        return
    from streams.db.asm import group_exists

    async def work(conn: Any) -> bool:
        return await group_exists(conn, tenant, group)

    if not run(with_db(work)):
        raise fail(f"tenant {tenant!r} has no suppression group {group}", 1)


async def _publish_suppression(
    tenant: str, address: str, value: Suppression | None, group: int | None = None
) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from streams.contract.build import suppression_key
    from streams.contract.codec import default_codec
    from streams.errors import StackError
    from streams.kafka.config import client_options
    from streams.kafka.connect import start_client

    s = settings()
    options = client_options(s.kafka)
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True)
    raw = default_codec().encode("Suppression", value) if value is not None else None
    try:
        await start_client(producer, options)
        await producer.send_and_wait(
            s.topics.suppressions, raw, key=suppression_key(tenant, address, group)
        )
    except KafkaError as exc:
        raise StackError(f"cannot publish to {s.topics.suppressions}: {exc}") from exc
    finally:
        await producer.stop()


@suppression_app.command("add")
def suppression_add(
    tenant: Annotated[str, typer.Option(help="The tenant whose list it is.")],
    address: Annotated[str, typer.Argument(help="The address never to send to.")],
    reason: Annotated[str, typer.Option(help="Why: manual, complaint, unsubscribe...")] = "manual",
    group: GroupOpt = None,
) -> None:
    """Add an address to a tenant's suppression list (or a group's); sends to it (of the group)
    are dropped from then on."""
    _check_group(tenant, group)
    record = make_suppression(tenant, address, reason, "cli", datetime.now(UTC), group_id=group)
    run(_publish_suppression(tenant, address, record, group))
    where = "" if group is None else f" in group {group}"
    out.print(f"suppressed {address.lower()} for {tenant}{where}")


@suppression_app.command("remove")
def suppression_remove(
    tenant: Annotated[str, typer.Option(help="The tenant whose list it is.")],
    address: Annotated[str, typer.Argument(help="The address to send to again.")],
    group: GroupOpt = None,
) -> None:
    """Take an address off a tenant's suppression list, or a group's (a tombstone on the
    compacted topic)."""
    run(_publish_suppression(tenant, address, None, group))
    where = "suppression list" if group is None else f"suppression group {group}"
    out.print(f"removed {address.lower()} from {tenant}'s {where}")


@suppression_app.command("list")
def suppression_list(
    tenant: Annotated[str, typer.Option(help="The tenant whose list it is.")],
    json: JsonOpt = False,
    group: GroupOpt = None,
) -> None:
    """The addresses a tenant does not send to (the mail of a group, with --group), newest
    first."""
    _check_group(tenant, group)

    async def work(conn: Any) -> list[Any]:
        if group is not None:
            return list(
                await conn.fetch(
                    "SELECT address, reason, source, detail, created_at FROM group_suppressions "
                    "WHERE tenant_id = $1 AND group_id = $2 AND removed_at IS NULL "
                    "ORDER BY created_at DESC",
                    tenant,
                    group,
                )
            )
        return list(
            await conn.fetch(
                "SELECT address, reason, source, detail, created_at FROM suppressions "
                "WHERE tenant_id = $1 AND removed_at IS NULL ORDER BY created_at DESC",
                tenant,
            )
        )

    rows = run(with_db(work))
    if json:
        out.print_json(orjson.dumps([dict(r) for r in rows]).decode())
        return
    grid = Table("address", "reason", "source", "since", "detail")
    for r in rows:
        grid.add_row(
            r["address"],
            r["reason"],
            r["source"],
            r["created_at"].strftime("%Y-%m-%d %H:%M"),
            r["detail"] or "",
        )
    out.print(grid)
    out.print(f"{len(rows)} suppressed")


template_app = typer.Typer(
    help="Stored templates (jinja2, rendered in a sandbox).", no_args_is_help=True
)


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {path}: {exc}", 2) from None


@template_app.command("put")
def template_put(
    tenant: Annotated[str, typer.Argument(help="An existing tenant.")],
    template_id: Annotated[str, typer.Argument(help="The id requests name in template_id.")],
    subject: Annotated[str | None, typer.Option(help="Subject template.")] = None,
    html: Annotated[Path | None, typer.Option(help="File with the HTML template.")] = None,
    text: Annotated[Path | None, typer.Option(help="File with the plain-text template.")] = None,
) -> None:
    """Create or replace a stored template; workers use it after their next directory refresh."""
    import asyncpg

    from streams.deliver.mime import StoredTemplate, prepare

    body_html, body_text = _read(html), _read(text)
    if subject is None and body_html is None and body_text is None:
        raise fail("give at least one of --subject, --html, --text", 2)
    probe: dict[str, Any] = {
        "from": {"email": "check@postwire.invalid", "name": None},
        "reply_to": None,
        "content": {
            "subject": None,
            "text": None,
            "html": None,
            "template_id": template_id,
            "headers": {},
            "attachments": [],
        },
        "substitutions": {},
        "categories": [],
        "custom_args": {},
        "created_at": datetime.now(UTC),
    }
    from streams.errors import RenderError

    try:  # compiles every part in the sandbox: a syntax error is refused now, not per message
        prepare(probe, StoredTemplate(subject, body_html, body_text))
    except RenderError as exc:
        raise fail(f"template refused: {exc}", 1) from None

    async def work(conn: Any) -> None:
        await conn.execute(
            "INSERT INTO templates (tenant_id, template_id, subject, html, text) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, template_id) DO UPDATE SET "
            "subject = EXCLUDED.subject, html = EXCLUDED.html, text = EXCLUDED.text, "
            "updated_at = now()",
            tenant,
            template_id,
            subject,
            body_html,
            body_text,
        )

    try:
        run(with_db(work))
    except asyncpg.ForeignKeyViolationError:
        raise fail(f"no tenant {tenant!r}; create it with `postwire tenant add`") from None
    out.print(f"template {template_id} saved for {tenant}")


@template_app.command("list")
def template_list(tenant: Annotated[str, typer.Argument(help="The tenant.")]) -> None:
    """A tenant's stored templates."""

    async def work(conn: Any) -> list[Any]:
        return list(
            await conn.fetch(
                "SELECT template_id, subject, html IS NOT NULL AS html, text IS NOT NULL AS text, "
                "updated_at FROM templates WHERE tenant_id = $1 ORDER BY template_id",
                tenant,
            )
        )

    grid = Table("template", "subject", "html", "text", "updated")
    for r in run(with_db(work)):
        grid.add_row(
            r["template_id"],
            r["subject"] or "",
            "yes" if r["html"] else "",
            "yes" if r["text"] else "",
            r["updated_at"].strftime("%Y-%m-%d %H:%M"),
        )
    out.print(grid)
