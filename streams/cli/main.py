"""The `postwire` command line (typer + rich)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.table import Table

from streams.cli.api import register as register_api_commands
from streams.cli.common import err, fail, out, run, settings, with_db
from streams.cli.keys import keys_app
from streams.cli.mail import queue_app, suppression_app, template_app
from streams.cli.replay import replay
from streams.cli.senders import dkim_app, sender_app
from streams.cli.trace import trace
from streams.cli.webhooks import webhooks_app

__all__ = ["app", "main"]

app = typer.Typer(
    help="postwire: a Kafka-native email pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database commands.", no_args_is_help=True)
schemas_app = typer.Typer(help="Avro contract commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(schemas_app, name="schemas")
bench_app = typer.Typer(
    help="Benchmarks, with baselines measured in the same run.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
tenant_app = typer.Typer(help="Tenants (their API keys: `postwire keys`).", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(queue_app, name="queue")
app.add_typer(suppression_app, name="suppression")
app.add_typer(sender_app, name="sender")
app.add_typer(dkim_app, name="dkim")
app.add_typer(template_app, name="template")
app.add_typer(keys_app, name="keys")
app.add_typer(webhooks_app, name="webhooks")
app.command("replay")(replay)
app.command("trace")(trace)

_run = run
_settings = settings
_with_db = with_db


@app.command()
def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start in the background and return.")
    ] = False,
    workers: Annotated[
        bool, typer.Option(help="Also start the workers, the sinks and the HTTP ingress.")
    ] = True,
    brokers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=16,
            help=(
                "Embedded Kafka brokers; default POSTWIRE_KAFKA_BROKERS, else as many as the "
                "data dir's cluster has (1 for a new one)."
            ),
        ),
    ] = None,
) -> None:
    """Start Kafka, PostgreSQL, topics, migrations, the workers, the sinks and the HTTP
    ingress; restart a child that dies; run until Ctrl-C."""
    from streams.stack.stack import Stack

    if brokers is not None:
        # the flag is the knob: read with the others (and checked against the replication),
        # and seen by a detached supervisor and the children
        os.environ["POSTWIRE_KAFKA_BROKERS"] = str(brokers)
    settings = _settings()
    if detach:
        from streams.errors import PostwireError
        from streams.stack.detach import spawn_supervisor

        try:
            info = spawn_supervisor(settings, workers=workers)
        except PostwireError as exc:
            raise fail(str(exc)) from None
        _print_up(info, settings, workers=workers)
        out.print("stop it with `postwire down`; see it with `postwire ps`")
        return
    stack = Stack(settings, workers=workers)
    raise typer.Exit(_run(_up(stack)))


def _print_up(info: Any, settings: Any, *, workers: bool) -> None:
    out.print(f"[bold green]postwire is up[/] in {info.started_in:.1f}s")
    out.print(f"  kafka bootstrap : {info.bootstrap}")
    out.print(f"  database url    : {info.database_url}")
    if workers:
        out.print(
            f"  http ingress    : http://{settings.api_host}:{settings.api_port}/v3/mail/send"
        )
        if settings.inbound.bounce_domain:
            inbound = settings.inbound
            out.print(
                f"  bounces (smtp)  : {inbound.host}:{inbound.port} for @{inbound.bounce_domain}"
            )
    out.print(f"  data dir        : {info.data_dir}")
    for name, pid in info.pids.items():
        out.print(f"  {name:<16}: pid {pid}")


def _echo_event(line: str, tail: str) -> None:
    # one line each, however narrow the terminal: operators grep for them
    from rich.markup import escape

    err.print(f"[bold yellow]supervisor:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if tail:
        err.print(tail, markup=False, highlight=False, style="dim", soft_wrap=True)


async def _up(stack: Any) -> int:
    from rich.markup import escape

    from streams.runtime.eventloop import stop_on_signals
    from streams.stack.supervisor import supervise

    stop = stop_on_signals()
    info = await stack.start(detach=False)

    def ready() -> None:
        _print_up(info, stack.settings, workers=stack.workers)
        out.print("press Ctrl-C to stop")

    reason = await supervise(
        stack,
        stop,
        detach=False,
        echo=_echo_event,
        ready=ready,
        on_stopping=lambda: out.print("stopping..."),
    )
    out.print("stopped")
    if reason:
        err.print(f"[bold red]error:[/] {escape(reason)}; the stack is stopped", soft_wrap=True)
        return 1
    return 0


@app.command(hidden=True)
def supervise(
    workers: Annotated[bool, typer.Option(help="Also the workers, sinks and ingress.")] = True,
) -> None:
    """The background supervisor `up --detach` starts (reports on stdout, then supervises)."""
    from streams.stack.detach import run_detached_supervisor
    from streams.stack.stack import Stack

    raise typer.Exit(_run(run_detached_supervisor(Stack(_settings(), workers=workers))))


@app.command()
def down() -> None:
    """Stop a stack started with `postwire up --detach` (its supervisor first)."""
    from streams.stack.stack import stop_detached

    stopped = stop_detached(_settings())
    if not stopped:
        out.print("nothing was running")
    for name, pid in stopped.items():
        out.print(f"stopped {name} (pid {pid})")


@app.command()
def ps(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The stack's children as its supervisor sees them: pid, state, uptime, restarts and
    why each last exited."""
    import time

    from streams.procs import pid_alive
    from streams.stack.status import read_status, status_rows

    settings = _settings()
    status = read_status(settings.data_dir / "run")
    if status is None:
        if as_json:
            out.print_json(data={"supervisor": None, "gave_up": None, "children": []})
        else:
            out.print(f"no stack has run from {settings.data_dir}")
        return
    supervising = pid_alive(status.supervisor)
    alive = {c.name: c.pid is not None and pid_alive(c.pid) for c in status.children}
    rows = status_rows(status, time.time(), supervisor_alive=supervising, alive=alive)
    if as_json:
        out.print_json(
            data={
                "supervisor": {"pid": status.supervisor, "running": supervising},
                "gave_up": status.gave_up,
                "children": rows,
            }
        )
        return
    grid = Table("name", "pid", "state", "uptime", "restarts", "last exit")
    for row in rows:
        uptime = row["uptime"]
        grid.add_row(
            row["name"],
            str(row["pid"] or ""),
            row["state"],
            "" if uptime is None else _duration(uptime),
            str(row["restarts"]),
            row["last_exit"] or "",
        )
    out.print(grid)
    state = "running" if supervising else "gone"
    out.print(f"supervisor pid {status.supervisor} ({state})")
    if status.gave_up:
        out.print(f"[bold red]{status.gave_up}[/]", highlight=False)


def _duration(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="Port; default POSTWIRE_API_PORT.")] = None,
) -> None:
    """Serve the HTTP API (SendGrid-compatible /v3/mail/send, verify, status, events,
    suppressions, /metrics) until SIGINT/SIGTERM."""
    from streams.api.server import run_api

    settings = _settings()
    if port is not None:
        settings = settings.model_copy(update={"api_port": port})
    run_api(settings)


@app.command()
def inbound(
    port: Annotated[int | None, typer.Option(help="Port; default POSTWIRE_INBOUND_PORT.")] = None,
) -> None:
    """Receive the bounces and feedback reports sent to VERP return paths on the bounce domain
    (POSTWIRE_BOUNCE_DOMAIN) and turn them into events and suppressions, until SIGINT/SIGTERM."""
    from streams.inbound.server import run_inbound

    settings = _settings()
    if port is not None:
        settings = settings.model_copy(update={"inbound_port": port})
    if not settings.inbound.bounce_domain:
        raise fail("set POSTWIRE_BOUNCE_DOMAIN (the domain whose MX points at this server) first")
    run_inbound(settings)


@app.command()
def worker(
    stage: Annotated[list[str] | None, typer.Option(help="Stage(s) to run; default all.")] = None,
) -> None:
    """Run the faust worker (all stages, or those named) against the configured cluster."""
    from streams.worker.app import STAGES, run_worker

    run_worker(_settings(), tuple(stage) if stage else STAGES)


@app.command()
def sink(
    table: Annotated[list[str] | None, typer.Option(help="Table(s) to sink; default all.")] = None,
) -> None:
    """Run the Kafka -> PostgreSQL sinks until SIGINT/SIGTERM."""
    from sinks.runner import run_sinks
    from streams.obs import tracing
    from streams.obs.logs import configure_logging
    from streams.runtime.eventloop import install_fast_loop, stop_on_signals

    settings = _settings()
    configure_logging(settings.logs, "sinks")
    tracing.setup(settings.tracing, "sinks")
    install_fast_loop(kafka_tls=settings.kafka.security.tls)

    async def main() -> None:
        stop = stop_on_signals()
        await run_sinks(settings, tuple(table) if table else None, stop)

    _run(main())


@app.command()
def topics(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Create any missing postwire topics and list them, with how each existing one differs
    from the settings (`drift`); existing topics are never changed."""
    from streams.kafka.drift import TopicState, read_topics, topic_drift
    from streams.kafka.topics import ensure_topics, topic_specs
    from streams.stages.policies import delay_topics, webhook_delay_topics

    settings = _settings()
    delays, hooks = delay_topics(settings), webhook_delay_topics(settings)
    specs = topic_specs(settings.kafka, delays, hooks)

    async def work() -> tuple[set[str], dict[str, TopicState]]:
        made = set(await ensure_topics(settings.kafka, delays, hooks))
        return made, await read_topics(settings.kafka, [spec.name for spec in specs])

    created, states = _run(work())
    drift = {s.name: topic_drift(s, states[s.name]) for s in specs if s.name in states}
    if as_json:
        rows = [
            {
                "topic": spec.name,
                "partitions": spec.partitions,
                "replication": spec.replication,
                "min_insync_replicas": int(spec.config["min.insync.replicas"]),
                "compacted": spec.compacted,
                "purpose": spec.purpose,
                "created": spec.name in created,
                "under_replicated": (
                    states[spec.name].under_replicated if spec.name in states else None
                ),
                "drift": [
                    {
                        "setting": d.setting,
                        "configured": d.configured,
                        "actual": d.actual,
                        "fix": d.fix,
                    }
                    for d in drift.get(spec.name, [])
                ],
            }
            for spec in specs
        ]
        out.print_json(data=rows)
        return
    grid = Table("topic", "partitions", "replicas", "cleanup", "purpose", "", "drift")
    for spec in specs:
        grid.add_row(
            spec.name,
            str(spec.partitions),
            f"{spec.replication} (min in sync {spec.config['min.insync.replicas']})",
            "compact" if spec.compacted else "delete",
            spec.purpose,
            "created" if spec.name in created else "",
            ", ".join(d.setting for d in drift.get(spec.name, [])),
        )
    out.print(grid)
    drifted = [(name, d) for name, found in drift.items() for d in found]
    if drifted:
        out.print(
            f"[bold yellow]{len({n for n, _ in drifted})} topic(s) differ from the settings[/];"
            " `postwire topics` changes no existing topic. To make them match "
            f"(with --bootstrap-server {settings.bootstrap}):"
        )
        for name, d in drifted:
            out.print(f"  {name}: {d}\n    {d.fix}", markup=False, highlight=False)


@db_app.command("migrate")
def db_migrate(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Apply pending SQL migrations."""
    from streams.db.migrate import apply_migrations

    applied = _run(apply_migrations(_settings().dsn))
    if as_json:
        out.print_json(data={"applied": [f"{m.version:04d}_{m.name}" for m in applied]})
        return
    if not applied:
        out.print("database is up to date")
    for m in applied:
        out.print(f"applied {m.version:04d}_{m.name}")


@tenant_app.command("add")
def tenant_add(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id, as producers put it in requests.")],
    per_second: Annotated[int | None, typer.Option(help="Override the default limit.")] = None,
    per_minute: Annotated[int | None, typer.Option(help="Override the default limit.")] = None,
    per_hour: Annotated[int | None, typer.Option(help="Override the default limit.")] = None,
    policy: Annotated[
        str, typer.Option(help="Over the limit: defer (retry after the window) or reject.")
    ] = "defer",
    smtp_probe: Annotated[bool, typer.Option(help="Probe SMTP by default on verify.")] = False,
    key: Annotated[bool, typer.Option(help="Also create an API key and print it.")] = True,
) -> None:
    """Create or update a tenant (limits, throttle policy), optionally with a new API key."""
    from streams.db.tenants import create_api_key, create_tenant

    if policy not in ("defer", "reject"):
        err.print(f"[bold red]error:[/] --policy must be defer or reject, not {policy!r}")
        raise typer.Exit(2)

    secret = _settings().secret if key else None

    async def work(conn: Any) -> tuple[str, str] | None:
        await create_tenant(
            conn,
            tenant_id,
            policy=policy,
            per_second=per_second,
            per_minute=per_minute,
            per_hour=per_hour,
            smtp_probe=smtp_probe,
        )
        return await create_api_key(conn, tenant_id, secret=secret) if secret else None

    created = _run(_with_db(work))
    out.print(f"tenant {tenant_id} saved; the gate picks it up within a few seconds")
    if created:
        from streams.cli.keys import print_new_key

        print_new_key(*created)


@tenant_app.command("key", deprecated=True)
def tenant_key(tenant_id: Annotated[str, typer.Argument(help="An existing tenant.")]) -> None:
    """Same as `postwire keys create --tenant TENANT_ID`."""
    from streams.cli.keys import create

    create(tenant_id)


@tenant_app.command("revoke", deprecated=True)
def tenant_revoke(key_id: Annotated[str, typer.Argument(help="The key id (k_...).")]) -> None:
    """Same as `postwire keys revoke KEY_ID`."""
    from streams.cli.keys import revoke

    revoke(key_id)


@bench_app.command("restart")
def bench_restart(
    records: Annotated[
        int, typer.Option(help="Records in the front worker's gate changelog.")
    ] = 100_000,
) -> None:
    """A front worker's start to ready (/healthz 200) with a large gate changelog: with no
    table on disk, after a clean stop, and after a kill -9 (its own throwaway stack)."""
    from streams.bench.restart import report

    out.print(_run(report(records)), markup=False, highlight=False)


@bench_app.command("verify")
def bench_verify(
    requests: Annotated[int, typer.Option(help="Requests to measure.")] = 20000,
    rate: Annotated[float | None, typer.Option(help="Publish at this many requests/s.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Throughput and request-to-row latency of the verification pipeline (MX warm), and the
    Kafka records each request cost (from the broker's offsets)."""
    import dataclasses
    import json

    from streams.bench.verify import run_verify_bench

    def progress(message: str) -> None:
        if not as_json:
            err.print(f"[dim]{message}[/]")

    result = _run(run_verify_bench(requests, rate, workers, partitions, progress))
    if as_json:
        figures = dataclasses.asdict(result)
        figures.update(vs_passthrough=result.vs_passthrough, vs_copy=result.vs_copy)
        out.print_json(json.dumps(figures))
        return
    grid = Table("measure", "value")
    grid.add_row("requests", f"{result.requests:,}")
    grid.add_row("publish rate", "as fast as possible" if rate is None else f"{rate:,.0f}/s")
    grid.add_row("worker processes", str(result.workers))
    grid.add_row("pipeline requests/s", f"{result.requests_per_s:,.0f}")
    grid.add_row(
        "latency p50 / p95 / p99",
        f"{result.p50_ms:,.0f} / {result.p95_ms:,.0f} / {result.p99_ms:,.0f} ms",
    )
    grid.add_row("aiokafka pass-through msg/s", f"{result.passthrough_per_s:,.0f}")
    grid.add_row("asyncpg COPY rows/s", f"{result.copy_per_s:,.0f}")
    grid.add_row("pipeline / pass-through", f"{result.vs_passthrough:.2f}")
    grid.add_row("pipeline / COPY", f"{result.vs_copy:.2f}")
    rpr = result.records_per_request
    grid.add_row(
        "Kafka records / request",
        f"{rpr['total']:.2f} ({rpr['produced']:.2f} produced + {rpr['consumed']:.2f} consumed)",
    )
    out.print(grid)


@bench_app.command("api")
def bench_api(
    requests: Annotated[int, typer.Option(help="POST /v3/mail/send requests.")] = 5000,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """The HTTP API into Kafka vs a raw aiokafka producer writing the same records."""
    import dataclasses
    import json

    from streams.bench.api import run_api_bench

    def progress(message: str) -> None:
        if not as_json:
            err.print(f"[dim]{message}[/]")

    result = _run(run_api_bench(requests, concurrency, progress))
    if as_json:
        out.print(json.dumps({**dataclasses.asdict(result), "vs_raw": result.vs_raw}))
        return
    grid = Table(
        "", "requests/s", "p50", "p99", title=f"{requests:,} sends, {concurrency} at a time"
    )
    grid.add_row(
        "HTTP API",
        f"{result.api_per_s:,.0f}",
        f"{result.api_p50_ms:.1f} ms",
        f"{result.api_p99_ms:.1f} ms",
    )
    grid.add_row(
        "raw aiokafka",
        f"{result.raw_per_s:,.0f}",
        f"{result.raw_p50_ms:.1f} ms",
        f"{result.raw_p99_ms:.1f} ms",
    )
    grid.add_row("API / raw", f"{result.vs_raw:.2f}", "", "")
    out.print(grid)


@bench_app.command("reads")
def bench_reads(
    addresses: Annotated[int, typer.Option(help="Results on the verify job page.")] = 10000,
    rounds: Annotated[int, typer.Option(help="GETs per way of reading.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """A verify job page read in full, with gzip, and revalidated with If-None-Match (304)."""
    import dataclasses
    import json

    from streams.bench.reads import run_reads_bench

    def progress(message: str) -> None:
        if not as_json:
            err.print(f"[dim]{message}[/]")

    result = _run(run_reads_bench(addresses, rounds, progress))
    if as_json:
        out.print(json.dumps(dataclasses.asdict(result)))
        return
    grid = Table(
        "read", "status", "bytes on the wire", "p50", "max", title=f"{addresses:,}-result page"
    )
    for way in result.ways:
        grid.add_row(
            way.name,
            str(way.status),
            f"{way.wire_bytes:,}",
            f"{way.p50_ms:.1f} ms",
            f"{way.max_ms:.1f} ms",
        )
    out.print(grid)


@bench_app.command("deliver")
def bench_deliver(
    messages: Annotated[int, typer.Option(help="Messages to deliver (multiple of 100).")] = 20000,
    workers: Annotated[int, typer.Option(help="faust worker processes.")] = 2,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    peers: Annotated[bool, typer.Option(help="Also run raw aiosmtplib and Postfix.")] = True,
    lane_backlog: Annotated[
        int, typer.Option(help="Bulk backlog for the priority-lane figure (0: skip).")
    ] = 0,
    dkim: Annotated[
        str, typer.Option(help="DKIM key of the bench sender: rsa (2048) or ed25519.")
    ] = "rsa",
    fairness: Annotated[
        bool,
        typer.Option(
            help="Instead: tenant B's mail to a site while tenant A's backlog drains there."
        ),
    ] = False,
    backlog: Annotated[int, typer.Option(help="With --fairness: tenant A's backlog.")] = 10_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """DKIM-signed delivery to smtp-sink vs raw aiosmtplib and Postfix (needs the postfix
    package)."""
    import dataclasses
    import json

    if fairness:
        _bench_fairness(backlog, partitions, as_json)
        return

    from streams.bench.deliver import run_deliver_bench
    from streams.deliver.dkim import key_type
    from streams.errors import DkimKeyError

    try:
        kind = key_type(dkim)
    except DkimKeyError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dkim") from None

    def progress(message: str) -> None:
        if not as_json:
            err.print(f"[dim]{message}[/]")

    result = _run(
        run_deliver_bench(
            messages,
            workers,
            partitions,
            peers=peers,
            lane_backlog=lane_backlog,
            dkim=kind,
            progress=progress,
        )
    )
    if as_json:
        figures = dataclasses.asdict(result)
        figures.update(vs_raw=result.vs_raw, vs_postfix=result.vs_postfix)
        out.print_json(json.dumps(figures))
        return
    grid = Table("measure", "value")
    grid.add_row("messages", f"{result.messages:,}")
    grid.add_row("worker processes", str(result.workers))
    grid.add_row("DKIM", result.dkim)
    grid.add_row("pipeline msg/s (at the sink)", f"{result.per_s:,.0f}")
    grid.add_row("until every row landed", f"{result.rows_seconds:,.1f} s")
    rpm = result.records_per_message
    if rpm:
        grid.add_row(
            "Kafka records / message",
            f"{rpm['total']:.2f} ({rpm['produced']:.2f} produced + {rpm['consumed']:.2f} consumed)",
        )
    if result.raw_per_s and result.postfix_per_s:
        grid.add_row("raw aiosmtplib msg/s", f"{result.raw_per_s:,.0f}")
        grid.add_row("Postfix relay msg/s", f"{result.postfix_per_s:,.0f}")
        grid.add_row("pipeline / raw", f"{result.vs_raw:.2f}")
        grid.add_row("pipeline / Postfix", f"{result.vs_postfix:.2f}")
    lane_rows = (
        ("lane", "high priority under bulk backlog"),
        ("lane_accepted", "  of which until the receiver's 250"),
        ("lane_admitted", "  of which until the gate let it in"),
    )
    for name, label in lane_rows:
        if f"{name}_p50_ms" in result.extra:
            p50, worst = result.extra[f"{name}_p50_ms"], result.extra[f"{name}_max_ms"]
            grid.add_row(label, f"p50 {p50:,.0f} ms, max {worst:,.0f} ms")
    out.print(grid)


def _bench_fairness(backlog: int, partitions: int, as_json: bool) -> None:
    import json

    from streams.bench.fairness import run_fairness_bench

    def progress(message: str) -> None:
        if not as_json:
            err.print(f"[dim]{message}[/]")

    result = _run(run_fairness_bench(backlog, partitions, progress=progress))
    figures = result.figures()
    if as_json:
        out.print_json(
            json.dumps(
                {
                    **figures,
                    "backlog": result.backlog,
                    "rate": result.rate,
                    "a_before_b": result.a_before_b,
                    "duplicates": result.duplicates,
                    "bulk_rss_idle_mb": result.bulk_rss_idle_mb,
                    "bulk_rss_peak_mb": result.bulk_rss_peak_mb,
                    "seconds": result.seconds,
                }
            )
        )
        return
    grid = Table("measure", "value")
    grid.add_row("tenant A's backlog", f"{result.backlog:,} bulk, site limited to {result.rate}/s")
    grid.add_row(
        "B bulk to the receiver's 250",
        f"p50 {figures['b_bulk_p50_ms']:,.0f} ms, p99 {figures['b_bulk_p99_ms']:,.0f} ms"
        f" ({len(result.b_bulk_ms)} messages)",
    )
    grid.add_row(
        "B high to the receiver's 250",
        f"p50 {figures['b_high_p50_ms']:,.0f} ms, p99 {figures['b_high_p99_ms']:,.0f} ms"
        f" ({len(result.b_high_ms)} messages)",
    )
    grid.add_row(
        "  of which until on the lane (p50)",
        f"bulk {figures['b_bulk_to_lane_p50_ms']:,.0f} ms,"
        f" high {figures['b_high_to_lane_p50_ms']:,.0f} ms",
    )
    grid.add_row("A's messages before B's last bulk one", f"{result.a_before_b:,}")
    grid.add_row("messages received twice", str(result.duplicates))
    if result.bulk_rss_idle_mb is not None and result.bulk_rss_peak_mb is not None:
        grid.add_row(
            "bulk worker RSS",
            f"{result.bulk_rss_idle_mb:,.0f} MB idle, {result.bulk_rss_peak_mb:,.0f} MB at most",
        )
    grid.add_row("run", f"{result.seconds:,.1f} s")
    out.print(grid)


@bench_app.command("load")
def bench_load(
    scenario: Annotated[
        str, typer.Option(help="baseline, peak, stress, spike or endurance.")
    ] = "baseline",
    duration: Annotated[
        float | None,
        typer.Option(help="Squeeze or stretch the scenario to this many seconds (same rates)."),
    ] = None,
    door: Annotated[str, typer.Option(help="http, kafka or both (one after the other).")] = "both",
    mix: Annotated[
        str, typer.Option(help="Request kinds and their weights.")
    ] = "verify=0.8,send=0.2",
    workers: Annotated[int, typer.Option(help="faust worker slots.")] = 1,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    tenants: Annotated[int, typer.Option(help="Tenants the load is spread over.")] = 4,
    max_in_flight: Annotated[
        int, typer.Option(help="Unanswered requests at most; beyond: client_overload errors.")
    ] = 10_000,
    connections: Annotated[
        int, typer.Option(help="HTTP connections the generator may open to the API.")
    ] = 1000,
    timeout: Annotated[float, typer.Option(help="Seconds before a request is a timeout.")] = 30.0,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the backlog after the load stops.")
    ] = 600.0,
    baselines: Annotated[
        bool, typer.Option(help="Also measure the raw producer, pass-through and COPY.")
    ] = True,
    nice: Annotated[
        int, typer.Option(help="The generator's scheduling priority during the run (0: as is).")
    ] = -15,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Open-model load scenarios through the HTTP API and the raw Kafka door: latency to the
    row, errors, drain, memory, k6-style thresholds."""
    import json

    from streams.bench.load import LoadOptions, run_load_bench
    from streams.bench.load_profile import SCENARIOS, parse_mix
    from streams.bench.load_render import BarProgress, QuietProgress, render, to_json
    from streams.runtime.eventloop import install_fast_loop

    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"one of {', '.join(SCENARIOS)}", param_hint="--scenario")
    doors = {"both": ("http", "kafka"), "http": ("http",), "kafka": ("kafka",)}.get(door)
    if doors is None:
        raise typer.BadParameter("http, kafka or both", param_hint="--door")
    try:
        shares = parse_mix(mix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mix") from None
    if duration is not None and duration <= 0:
        raise typer.BadParameter("must be above 0", param_hint="--duration")
    chosen = SCENARIOS[scenario]
    options = LoadOptions(
        scenario=chosen.scaled(duration) if duration else chosen,
        mix=shares,
        doors=doors,
        workers=workers,
        partitions=partitions,
        tenants=tenants,
        max_in_flight=max_in_flight,
        connections=connections,
        timeout=timeout,
        drain_timeout=drain_timeout,
        baselines=baselines,
        nice=nice,
    )
    install_fast_loop()  # the generator needs every bit of its loop at 5,000 requests/s
    if as_json:
        result = _run(run_load_bench(options, QuietProgress()))
        typer.echo(json.dumps(to_json(result)))
        return
    with BarProgress(err) as bar:
        result = _run(run_load_bench(options, bar))
    render(result, out)


@schemas_app.command("snapshot")
def schemas_snapshot() -> None:
    """Record changed schemas as new versions under schemas/history (run before a release)."""
    from streams.contract.registry import snapshot_history

    written = snapshot_history()
    for path in written:
        out.print(f"wrote {path}")
    if not written:
        out.print("every schema matches its latest released version")


# after the commands above, so `--help` lists the stack first
register_api_commands(app)


def main() -> None:
    app()
