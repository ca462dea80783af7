"""`postwire send | verify FILE | status ID`: the HTTP API from the command line, with an API
key like any other client (``--key`` or ``POSTWIRE_API_KEY``)."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from streams.cli.apiclient import ApiClient
from streams.cli.common import fail, out, run, settings
from streams.cli.verifyfile import COLUMNS, done_addresses, read_addresses, result_row
from streams.errors import ApiClientError, InputFileError

__all__ = ["register"]

KeyOpt = Annotated[
    str | None, typer.Option("--key", help="API key; default POSTWIRE_API_KEY.", show_default=False)
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="API base URL; default POSTWIRE_API_URL or the local one."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _mail_body(
    to: list[str], sender: str | None, subject: str | None, text: str | None, html: str | None
) -> dict[str, Any]:
    if not to or not sender or not subject or not (text or html):
        raise fail("give --to, --from, --subject and --text or --html, or a --file", 2)
    content = [{"type": "text/plain", "value": text}] if text else []
    if html:
        content.append({"type": "text/html", "value": html})
    return {
        "personalizations": [{"to": [{"email": a} for a in to]}],
        "from": {"email": sender},
        "subject": subject,
        "content": content,
    }


def send(
    to: Annotated[list[str] | None, typer.Option("--to", help="Recipient (repeatable).")] = None,
    sender: Annotated[str | None, typer.Option("--from", help="Sender address.")] = None,
    subject: Annotated[str | None, typer.Option(help="Subject line.")] = None,
    text: Annotated[str | None, typer.Option(help="Plain-text body.")] = None,
    html: Annotated[str | None, typer.Option(help="HTML body.")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="A SendGrid v3 mail/send JSON body instead of the flags."),
    ] = None,
    priority: Annotated[str | None, typer.Option(help="critical, high, normal or bulk.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Makes a retried send safe: same key, same message.")
    ] = None,
    key: KeyOpt = None,
    url: UrlOpt = None,
    json: JsonOpt = False,
) -> None:
    """Send a message through the API (POST /v3/mail/send); prints its message id."""
    if file is not None:
        if to or sender or subject or text or html:
            raise fail("--file is the whole body: leave out --to/--from/--subject/--text/--html", 2)
        try:
            body = orjson.loads(file.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise fail(f"cannot read {file}: {exc}", 2) from None
    else:
        body = _mail_body(to or [], sender, subject, text, html)
    headers = {}
    if priority:
        headers["X-Postwire-Priority"] = priority
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key

    async def work() -> str:
        async with ApiClient(settings(), key, url) as api:
            _, answer, _ = await api.call("POST", "/v3/mail/send", body, ok=(202,), **headers)
            return answer["X-Message-Id"]

    message_id = run(work())
    if json:
        out.print_json(orjson.dumps({"message_id": message_id}).decode())
    else:
        out.print(message_id)


def status(
    message_id: Annotated[str, typer.Argument(help="The X-Message-Id of a send.")],
    key: KeyOpt = None,
    url: UrlOpt = None,
    json: JsonOpt = False,
) -> None:
    """State and event timeline per recipient of a message (GET /v1/messages/ID)."""

    async def work() -> dict[str, Any] | None:
        async with ApiClient(settings(), key, url) as api:
            code, _, body = await api.call("GET", f"/v1/messages/{message_id}", ok=(200, 404))
            return body if code == 200 else None

    found = run(work())
    if found is None:
        raise fail(f"no message {message_id} for this key's tenant (yet)", 1)
    if json:
        out.print_json(orjson.dumps(found).decode())
        return
    # one line per recipient, then its timeline: readable in a narrow terminal and in a log
    for r in found["recipients"]:
        last = r["last_reply"] or r["reason"] or ""
        out.print(
            f"[bold]{r['email']}[/]  {r['state']}  attempts {r['attempts']}  {last}",
            soft_wrap=True,
            highlight=False,
        )
        for e in r["events"]:
            detail = e.get("reason") or (e.get("smtp") or {}).get("message") or ""
            out.print(
                f"  {e['occurred_at']}  {e['type']}  {detail}", soft_wrap=True, highlight=False
            )


async def _verify_chunk(
    api: ApiClient, chunk: list[str], probe: bool | None, timeout: float, advance: Any
) -> list[dict[str, Any]]:
    """Submit one chunk as a job and wait for all its results. The job id is fixed by the
    chunk's content, so a run that is interrupted and started again picks the same job up."""
    idem = "verify-file:" + hashlib.sha256("\n".join(chunk).encode()).hexdigest()
    body = {"emails": chunk, "smtp_probe": probe}
    _, _, job = await api.call(
        "POST", "/v1/verify/batch", body, ok=(202,), **{"Idempotency-Key": idem}
    )
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        _, _, progress = await api.call("GET", f"{job['url']}?limit=1")
        advance(progress["done"] - seen)
        seen = progress["done"]
        if progress["status"] == "done":
            break
        if time.monotonic() > deadline:
            raise ApiClientError(
                f"job {job['id']} did not finish within {timeout:g} s; run again to resume"
            )
        await asyncio.sleep(0.25)
    results: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        _, _, page = await api.call("GET", f"{job['url']}?offset={offset}&limit=10000")
        results += page["results"]
        offset = page["next_offset"]
    return results


def verify(
    file: Annotated[Path, typer.Argument(help="CSV with an email column, or JSON Lines.")],
    output: Annotated[
        Path | None, typer.Option("--out", help="Results CSV; default FILE.results.csv.")
    ] = None,
    column: Annotated[str | None, typer.Option(help="The address column or JSON key.")] = None,
    smtp_probe: Annotated[
        bool | None, typer.Option(help="Probe mailboxes over SMTP; default the tenant's.")
    ] = None,
    chunk_size: Annotated[int, typer.Option(min=1, max=10_000, help="Addresses per job.")] = 1000,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one job.")] = 600.0,
    key: KeyOpt = None,
    url: UrlOpt = None,
    json: JsonOpt = False,
) -> None:
    """Verify every address of a file through the API; results go to a CSV as they come.
    Resumable: addresses already in the results file are not verified again."""
    target = output or file.with_name(file.name + ".results.csv")
    try:
        with file.open(newline="", encoding="utf-8") as lines:
            addresses = read_addresses(file, lines, column)
        done: set[str] = set()
        if target.exists():
            with target.open(newline="", encoding="utf-8") as existing:
                done = done_addresses(existing)
    except OSError as exc:
        raise fail(f"cannot read {exc.filename}: {exc.strerror}", 2) from None
    except InputFileError as exc:
        raise fail(str(exc), 2) from None
    todo = [a for a in addresses if a not in done]
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    counts: dict[str, int] = {}

    async def work() -> None:
        fresh = not target.exists()
        with (
            target.open("a", newline="", encoding="utf-8") as sink,
            Progress(
                TextColumn("verifying"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=out,
                disable=json,
            ) as bar,
        ):
            writer = csv.writer(sink)
            if fresh:
                writer.writerow(COLUMNS)
            task = bar.add_task("verify", total=len(todo))
            async with ApiClient(settings(), key, url) as api:
                for chunk in chunks:
                    results = await _verify_chunk(
                        api, chunk, smtp_probe, timeout, lambda n: bar.advance(task, n)
                    )
                    for result in results:
                        writer.writerow(result_row(result))
                        counts[result["is_reachable"]] = counts.get(result["is_reachable"], 0) + 1
                    # a crash after this line loses nothing: the next run starts after it
                    sink.flush()

    run(work())
    summary = {
        "file": str(file),
        "out": str(target),
        "total": len(addresses),
        "skipped": len(addresses) - len(todo),
        "verified": sum(counts.values()),
        "counts": counts,
    }
    if json:
        out.print_json(orjson.dumps(summary).decode())
        return
    verdicts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing new"
    out.print(
        f"{summary['verified']} verified ({verdicts}); {summary['skipped']} already in {target}"
    )


def register(app: typer.Typer) -> None:
    app.command()(send)
    app.command()(status)
    app.command()(verify)
