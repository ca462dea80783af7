"""Delivery-benchmark peers on loopback: Postfix's ``smtp-sink`` as the receiving end, a private
Postfix instance relaying to it (the incumbent postwire is compared with), and raw aiosmtplib
straight to the sink (the ceiling). Everything binds 127.0.0.0/8 on ports picked at run time.

``smtp-sink`` is used instead of aiosmtpd because aiosmtpd tops out near 2,000 msg/s on one
core, which would make the sink, not the sender, the thing measured."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import aiosmtplib

from streams.errors import StackError

__all__ = [
    "Envelope",
    "PeerResults",
    "PostfixBinaries",
    "PostfixRelay",
    "SmtpSink",
    "build_messages",
    "ensure_postfix",
    "raw_send",
    "run_baselines",
]

# Debian keeps the Postfix programs in /usr/sbin, which is not on a normal user's PATH.
_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/sbin")
# Queue subdirectories that hold messages not yet handed to the sink.
_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
_INSTALL_HINT = "install it with `apt-get install postfix` (choose 'No configuration')"


@dataclass(frozen=True)
class PostfixBinaries:
    smtp_sink: Path
    postfix: Path
    postconf: Path
    postqueue: Path
    postsuper: Path


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    data: bytes


def _which(name: str) -> Path | None:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SEARCH))
    return Path(found) if found else None


def ensure_postfix() -> PostfixBinaries:
    """The Postfix programs the delivery benchmark needs, or StackError naming the fix."""
    names = ("smtp-sink", "postfix", "postconf", "postqueue", "postsuper")
    found = {name: _which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise StackError(
            f"the delivery benchmark needs Postfix ({', '.join(missing)} not found); "
            f"{_INSTALL_HINT}"
        )
    paths = [path for path in found.values() if path is not None]
    return PostfixBinaries(*paths)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int, low: int = 20000, high: int = 32000) -> int:
    """The first of ``count`` consecutive ports free on every address, for the worker web ports
    `Stack` numbers from one base. Below Linux's ephemeral range (32768-60999), so an outgoing
    connection cannot take one of them between this check and the bind."""
    for _ in range(200):
        base = random.randrange(low, high - count)  # noqa: S311 - a port, not a secret
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("0.0.0.0", port))  # noqa: S104 - faust's web binds every address
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise StackError(f"no {count} consecutive free ports between {low} and {high}")


def _wait_listening(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not start listening on {host}:{port} within {timeout:.0f}s")


def build_messages(n: int, size: int = 5000, domains: int = 50) -> list[Envelope]:
    """``n`` distinct plain-text messages of about ``size`` bytes in SMTP form (CRLF)."""
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    messages = []
    for i in range(n):
        rcpt = f"user{i}@d{i % domains}.bench.example"
        head = (
            f"From: Bench <bench@sender.example>\r\nTo: <{rcpt}>\r\n"
            f"Subject: bench message {i}\r\nMessage-ID: <bench-{i}@sender.example>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()
        body = line * max(1, (size - len(head)) // len(line))
        messages.append(Envelope("bench@sender.example", rcpt, head + body))
    return messages


class SmtpSink:
    """Postfix's ``smtp-sink`` on ``host:port``: accepts and discards everything.

    It counts with ``-c``: after every session end, QUIT and end-of-DATA it writes
    ``sess=S quit=Q mesg=M`` followed by a bare CR (no newline) to stdout, unbuffered. stdout
    goes to a file, and :meth:`accepted` reads the last complete record from its tail, so the
    count is the sink's own and costs the sink nothing extra. ``mesg`` counts received "."
    lines, i.e. messages whose data fully arrived; it is cumulative for the process' life."""

    def __init__(
        self,
        binaries: PostfixBinaries,
        workdir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        backlog: int = 4096,
        max_connections: int = 1024,
    ) -> None:
        self.binaries = binaries
        self.host = host
        self.port = port or free_port(host)
        self.backlog = backlog
        self.max_connections = max_connections
        self.counter_file = workdir / f"smtp-sink-{self.port}.counters"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        args = [str(self.binaries.smtp_sink), "-c", "-m", str(self.max_connections)]
        if os.geteuid() == 0:
            # smtp-sink refuses to run as root without a user to drop to after bind()
            args += ["-u", "postfix"]
        # the announced ESMTP feature set is smtp-sink's default (PIPELINING, 8BITMIME, ...)
        args += [f"{self.host}:{self.port}", str(self.backlog)]
        with self.counter_file.open("wb") as out:
            self._proc = subprocess.Popen(args, stdout=out, stderr=subprocess.PIPE)
        try:
            _wait_listening(self.host, self.port, 10, "smtp-sink")
        except StackError:
            self.stop()
            raise

    def accepted(self) -> int:
        """Messages fully received so far (the last ``mesg=`` counter the sink wrote)."""
        try:
            with self.counter_file.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 256))
                tail = fh.read()
        except FileNotFoundError:
            return 0
        # the last record may be half-written; only CR-terminated ones are complete
        records = tail.split(b"\r")[:-1]
        for record in reversed(records):
            for field in record.split():
                if field.startswith(b"mesg="):
                    return int(field[5:])
        return 0

    async def wait_for(self, count: int, timeout: float) -> float:
        """Wait until the sink has received ``count`` messages; the perf_counter() when it had."""
        deadline = time.monotonic() + timeout
        while (got := self.accepted()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"smtp-sink received {got} of {count} within {timeout:.0f}s")
            if self._proc is not None and self._proc.poll() is not None:
                raise StackError(f"smtp-sink exited with status {self._proc.returncode}")
            await asyncio.sleep(0.005)
        return time.perf_counter()

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None


async def _send_all(
    host: str, port: int, messages: Sequence[Envelope], connections: int, what: str
) -> float:
    """Send every message over ``connections`` parallel SMTP sessions that pull from one shared
    iterator (so a slow session does not leave a fixed share behind); seconds taken."""
    pending: Iterator[Envelope] = iter(messages)

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=60)
        await client.connect()
        try:
            for env in pending:
                errors, _ = await client.sendmail(env.sender, [env.recipient], env.data)
                if errors:
                    raise StackError(f"{what} refused {env.recipient}: {errors}")
        finally:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()

    began = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(connections, len(messages)))):
                group.create_task(session())
    except* (aiosmtplib.SMTPException, OSError) as exc:
        raise StackError(f"sending to {what} at {host}:{port} failed: {exc.exceptions[0]}") from exc
    return time.perf_counter() - began


async def raw_send(host: str, port: int, messages: Sequence[Envelope], connections: int) -> float:
    """The ceiling: pre-built messages straight to an SMTP server, one aiosmtplib client per
    connection, as fast as they go. Seconds until the last reply."""
    return await _send_all(host, port, messages, connections, "the sink")


# A fair operator's relay tuning for one known-good, fast next hop; every value is standard
# Postfix configuration, nothing patched.
_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
# the package's own accounts: postfix runs the daemons, postdrop owns the submission queue
mail_owner = postfix
setgid_group = postdrop
# fixed names so nothing looks up this machine's hostname in DNS
myhostname = relay.bench.invalid
mydomain = bench.invalid
myorigin = $myhostname
# a pure relay: no domain is local, local delivery and aliasing are off
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled on this relay
alias_maps =
alias_database =
biff = no
# only the benchmark's loopback address, never port 25 or another interface; it must be an
# address an interface really has (127.0.0.2 is refused: lo holds only 127.0.0.1/8)
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [{sink_host}]:{sink_port}
# nothing may leave loopback: no DNS for next hops (the relayhost is a bracketed IP anyway)
# and no reverse lookups of connecting clients
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
# plaintext on both sides, like the other contenders (the sink offers no STARTTLS)
smtp_tls_security_level = none
smtpd_tls_security_level = none
# in_flow_delay (1s default) makes smtpd stall submitters whenever the queue manager is behind;
# that protects a shared server, but here it would measure a deliberate pause, not the relay
in_flow_delay = 0
# the sink never fails, so start at full concurrency instead of slow-start from 5
initial_destination_concurrency = {concurrency}
default_destination_concurrency_limit = {concurrency}
smtp_destination_concurrency_limit = {concurrency}
# reuse SMTP sessions to the relayhost always, not only once a backlog builds up
smtp_connection_cache_on_demand = yes
smtp_connection_cache_destinations = $relayhost
# a log of its own (no syslog here) so a stuck queue can be explained
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
"""

# Only the services a relay uses; no chroot (it would need a copy of /etc files inside the
# queue directory) and no pickup/local/pipe transports.
_MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class PostfixRelay:
    """A private Postfix instance under ``root`` relaying everything to ``sink``.

    Its processes are told apart from any other Postfix on the machine by the ``MAIL_CONFIG``
    environment variable the master hands every daemon, so stop() only ever signals its own."""

    def __init__(
        self,
        binaries: PostfixBinaries,
        sink: SmtpSink,
        root: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        concurrency: int = 20,
    ) -> None:
        self.binaries = binaries
        self.sink = sink
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="postwire-postfix-"))
        self.host = host
        self.port = port or free_port(host)
        self.concurrency = concurrency
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self._submitted = 0
        self._sink_base = 0
        self._first_inject: float | None = None

    def _postfix(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binaries.postfix), "-c", str(self.config_dir), *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            # postfix(1) reports to syslog or maillog_file, not to a non-tty stderr
            raise StackError(
                f"postfix {' '.join(command)} failed with status {result.returncode}: "
                f"{self.log_tail(2)}"
            )
        return result

    def start(self) -> None:
        # the daemons run as user postfix and must reach the queue, so every parent of root
        # must be searchable by others (mkdtemp's 0700 is not)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.config_dir.mkdir(exist_ok=True)
        # post-install (run by `postfix start`) fills the queue tree in but needs its root; the
        # data directory it must create itself, owned by mail_owner
        self.queue_dir.mkdir(mode=0o755, exist_ok=True)
        fields = {
            "root": self.root,
            "host": self.host,
            "port": self.port,
            "sink_host": self.sink.host,
            "sink_port": self.sink.port,
            "concurrency": self.concurrency,
        }
        (self.config_dir / "main.cf").write_text(_MAIN_CF.format(**fields))
        (self.config_dir / "master.cf").write_text(_MASTER_CF.format(**fields))
        # `postfix start` runs post-install, which creates the queue tree with its owners
        self._postfix("start")
        _wait_listening(self.host, self.port, 15, "postfix smtpd")

    def pids(self) -> list[int]:
        """Every live process of this instance (master and daemons)."""
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(int(entry.name))
        return found

    def stop(self, timeout: float = 10) -> None:
        if not (self.config_dir / "main.cf").exists():
            return
        self._postfix("stop", check=False)
        if self._wait_gone(timeout):
            return
        # abort skips the orderly shutdown; last resort is SIGKILL to our own PIDs only
        self._postfix("abort", check=False)
        if self._wait_gone(5):
            return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not self._wait_gone(5):
            raise StackError(f"postfix processes {self.pids()} survived stop, abort and SIGKILL")

    def cleanup(self) -> None:
        """Stop, then remove the instance's directory if this object created it."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def new_measurement(self) -> None:
        """Forget earlier injections: the next inject() starts the clock wait_drained() reads."""
        self._submitted = 0
        self._first_inject = None

    @property
    def sink_base(self) -> int:
        """The sink's count just before this measurement's first injection."""
        return self._sink_base

    def queued(self) -> int:
        """Queue files not yet delivered (maildrop, incoming, active, deferred, hold)."""
        total = 0
        for name in _QUEUES:
            base = self.queue_dir / name
            if base.exists():
                total += sum(1 for p in base.rglob("*") if p.is_file())
        return total

    async def inject(self, messages: Sequence[Envelope], connections: int) -> float:
        """Submit ``messages`` to this relay's smtpd over ``connections`` parallel sessions;
        seconds until the last 250 (queued, not yet relayed)."""
        if self._first_inject is None:
            self._sink_base = self.sink.accepted()
            self._first_inject = time.perf_counter()
        self._submitted += len(messages)
        return await _send_all(self.host, self.port, messages, connections, "postfix smtpd")

    async def wait_drained(self, timeout: float) -> float:
        """Wait until the sink has received everything injected and the queue is empty; seconds
        from the first injection. The sink's counter is the truth, the queue a second check."""
        if self._first_inject is None:
            return 0.0
        try:
            done = await self.sink.wait_for(self._sink_base + self._submitted, timeout)
        except TimeoutError as exc:
            raise StackError(
                f"postfix did not relay everything within {timeout:.0f}s: {exc}; "
                f"{self.queued()} still queued; {self.log_tail()}"
            ) from exc
        deadline = time.monotonic() + 30
        # the sink counts the "." before Postfix has read the 250 and removed the queue file
        while self.queued():
            if time.monotonic() > deadline:
                raise StackError(f"the sink has everything but {self.queued()} remain queued")
            await asyncio.sleep(0.01)
        return done - self._first_inject

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.root / "maillog").read_text(errors="replace")
        except OSError:
            return "no maillog"
        return " | ".join(text.strip().splitlines()[-lines:])


class PeerResults(TypedDict):
    messages: int
    message_bytes: int
    connections: int
    postfix_concurrency: int
    raw_seconds: float
    raw_per_s: float
    raw_sink_count: int
    postfix_inject_seconds: float
    postfix_inject_per_s: float
    postfix_seconds: float
    postfix_per_s: float
    postfix_sink_count: int


async def _settled_count(sink: SmtpSink, base: int) -> int:
    """The sink's count above ``base`` once it has stopped moving (catches duplicates)."""
    last = -1
    while (now := sink.accepted()) != last:
        last = now
        await asyncio.sleep(0.2)
    return last - base


async def run_baselines(
    n: int,
    message_bytes: int = 5000,
    connections: int = 20,
    concurrency: int = 20,
    warmup: int = 200,
    timeout: float = 600,
) -> PeerResults:
    """One smtp-sink, then raw aiosmtplib and a Postfix relay each sending it the same ``n``
    messages. Each contender first sends ``warmup`` messages not measured (Postfix spawns its
    daemons on first use). Postfix is timed from its first injection until the sink has
    received all ``n``."""
    binaries = ensure_postfix()
    messages = build_messages(n, message_bytes)
    warm = build_messages(warmup, message_bytes)
    workdir = Path(tempfile.mkdtemp(prefix="postwire-peers-"))
    sink = SmtpSink(binaries, workdir)
    try:
        sink.start()
        await raw_send(sink.host, sink.port, warm, connections)
        await sink.wait_for(warmup, 60)
        base = sink.accepted()
        raw_seconds = await raw_send(sink.host, sink.port, messages, connections)
        await sink.wait_for(base + n, 60)
        raw_count = await _settled_count(sink, base)

        relay = PostfixRelay(binaries, sink, concurrency=concurrency)
        try:
            relay.start()
            await relay.inject(warm, connections)
            await relay.wait_drained(120)
            await _settled_count(sink, 0)
            relay.new_measurement()
            inject_seconds = await relay.inject(messages, connections)
            postfix_seconds = await relay.wait_drained(timeout)
            postfix_count = await _settled_count(sink, relay.sink_base)
        finally:
            relay.cleanup()
    finally:
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return PeerResults(
        messages=n,
        message_bytes=len(messages[0].data) if messages else 0,
        connections=connections,
        postfix_concurrency=concurrency,
        raw_seconds=raw_seconds,
        raw_per_s=n / raw_seconds,
        raw_sink_count=raw_count,
        postfix_inject_seconds=inject_seconds,
        postfix_inject_per_s=n / inject_seconds,
        postfix_seconds=postfix_seconds,
        postfix_per_s=n / postfix_seconds,
        postfix_sink_count=postfix_count,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Raw aiosmtplib and Postfix into smtp-sink.")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=5000, help="approximate message bytes")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=20, help="postfix smtp concurrency")
    # the pipeline's workers run on uvloop, so the Python contenders do too unless asked not to
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    run = run_baselines(args.messages, args.size, args.connections, args.concurrency)
    if args.loop == "uvloop":
        import uvloop

        r = uvloop.run(run)
    else:
        r = asyncio.run(run)
    print(
        f"{r['messages']} messages of {r['message_bytes']} bytes, {r['connections']} connections,"
        f" postfix concurrency {r['postfix_concurrency']}, {args.loop} event loop"
    )
    print(f"{'contender':<28}{'seconds':>10}{'msg/s':>10}{'sink got':>10}")
    rows = [
        ("raw aiosmtplib -> sink", r["raw_seconds"], r["raw_per_s"], r["raw_sink_count"]),
        ("postfix: injection only", r["postfix_inject_seconds"], r["postfix_inject_per_s"], None),
        ("postfix: end to end", r["postfix_seconds"], r["postfix_per_s"], r["postfix_sink_count"]),
    ]
    for name, seconds, rate, count in rows:
        got = "" if count is None else str(count)
        print(f"{name:<28}{seconds:>10.2f}{rate:>10.0f}{got:>10}")


if __name__ == "__main__":
    main()
