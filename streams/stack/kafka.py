"""Embedded Apache Kafka (KRaft), run from Maven Central jars on the local Java: one node, or a
cluster of ``POSTWIRE_KAFKA_BROKERS`` nodes on loopback (``KafkaNode``, ``cluster_nodes``).

One node keeps everything under ``<data dir>/kafka`` (as before clusters existed); node n of a
larger cluster under ``<data dir>/kafka/<n>``, all formatted with one cluster id (kept in
``kafka/cluster.json`` with the size). The first min(N, 3) nodes are the controller quorum
(combined broker and controller), the rest brokers only. Internal topics (offsets, transaction
state) get min(N, 3) replicas and one less in-sync replica needed (at least 1), so a cluster of
three keeps committing offsets and transactions with a broker down.

By default its client listener speaks PLAINTEXT on loopback. With a ``SecuredListener`` it
speaks SASL_SSL instead: TLS with a throwaway CA (``streams.stack.tls``, PEM files Kafka reads
directly) and SASL with SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN for the listener's users. The
SCRAM users are written into the metadata log when the storage is formatted (``--add-scram``,
KRaft since 3.5), so only the first start of a data dir creates them; PLAIN users are checked
against ``server.properties`` (mode 0600). The controller listener stays PLAINTEXT on loopback:
KRaft does not support SCRAM on controller listeners (the credentials live in the metadata
the controllers serve)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from streams.errors import ConfigError, KafkaRefusedError, StackError
from streams.kafka.config import KafkaSettings, client_options
from streams.kafka.connect import explain_refusal
from streams.secret import write_private
from streams.settings import KAFKA_CLUSTER_RECORD, Settings
from streams.stack.process import ManagedProcess, port_in_use
from streams.stack.tls import TlsFiles

__all__ = [
    "CONTROLLER_QUORUM",
    "SCRAM_MECHANISMS",
    "EmbeddedKafka",
    "KafkaNode",
    "SecuredListener",
    "cluster_nodes",
    "fetch_kafka_jars",
    "internal_replication",
    "layout_problem",
    "locate_pom",
    "render_log4j",
    "render_server_properties",
    "wait_for_kafka",
]

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
# the storage tool parses "[name=...,password=...]" without quoting, and the JAAS lines quote
# values with '"': names and passwords stay inside a charset neither can misread
_CREDENTIAL = re.compile(r"[A-Za-z0-9._~-]{1,128}")
# voters of the controller quorum: three survive one loss; more only slow every metadata write
CONTROLLER_QUORUM = 3
# refusals that a broker still booting never gives: waiting longer cannot help
_FINAL = ("kafka.sasl_auth_failed", "kafka.sasl_mechanism", "kafka.tls_untrusted")


@dataclass(frozen=True)
class SecuredListener:
    """The embedded broker's secured mode: its client listener speaks SASL_SSL with ``tls``
    (made by ``streams.stack.tls.write_broker_tls``) and accepts ``users`` (name -> password)
    with SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN."""

    tls: TlsFiles
    users: Mapping[str, SecretStr]
    # the broker's own (inter-broker) login: PLAIN, checked against server.properties, so a
    # new one per start needs no state
    broker_password: SecretStr = field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(24)), repr=False
    )

    def __post_init__(self) -> None:
        if not self.users:
            raise ConfigError("a secured Kafka listener needs at least one user")
        for name, password in self.users.items():
            if not _CREDENTIAL.fullmatch(name) or not _CREDENTIAL.fullmatch(
                password.get_secret_value()
            ):
                raise ConfigError(
                    f"Kafka user {name!r}: names and passwords are 1-128 of A-Z a-z 0-9 . _ ~ -"
                )
        if "broker" in self.users:
            raise ConfigError("Kafka user 'broker' is the broker's own login; pick another name")

    def scram_arguments(self) -> list[str]:
        """The storage tool's ``--add-scram`` arguments: every user with both mechanisms."""
        return [
            arg
            for name, password in sorted(self.users.items())
            for mechanism in SCRAM_MECHANISMS
            for arg in (
                "--add-scram",
                f"{mechanism}=[name={name},password={password.get_secret_value()}]",
            )
        ]

    def properties(self) -> dict[str, str]:
        """What server.properties says for the SASL_SSL listener (beside the listener list)."""
        broker = self.broker_password.get_secret_value()
        plain_users = "".join(
            f' user_{name}="{password.get_secret_value()}"'
            for name, password in sorted(self.users.items())
        )
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return {
            "sasl.enabled.mechanisms": ",".join(("PLAIN", *SCRAM_MECHANISMS)),
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="broker" password="{broker}" user_broker="{broker}"{plain_users};'
            ),
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca),
            # clients check the broker's name; the broker checks its own the same way
            "ssl.endpoint.identification.algorithm": "https",
        }


@dataclass(frozen=True)
class KafkaNode:
    """One node of the embedded cluster: ``index`` counts from 0, Kafka's ``node.id`` from 1."""

    index: int
    port: int
    controller_port: int
    voter: bool  # a member of the controller quorum (combined broker and controller)
    root: Path  # its server.properties, logs and data dir

    @property
    def name(self) -> str:
        # the process name, numbered like the workers' (kafka, kafka1, kafka2, ...)
        return f"kafka{self.index or ''}"

    @property
    def node_id(self) -> int:
        return self.index + 1

    @property
    def log_dir(self) -> Path:
        return self.root / "data"


def cluster_nodes(settings: Settings) -> list[KafkaNode]:
    """The embedded cluster's nodes: ports from ``settings.kafka_broker_ports``, the first
    min(N, 3) voters; one node lives in ``<data dir>/kafka`` itself, more in ``kafka/<n>``."""
    root = settings.data_dir / "kafka"
    ports = settings.kafka_broker_ports
    return [
        KafkaNode(
            index=n,
            port=port,
            controller_port=cport,
            voter=n < CONTROLLER_QUORUM,
            root=root if len(ports) == 1 else root / str(n),
        )
        for n, (port, cport) in enumerate(ports)
    ]


def internal_replication(brokers: int) -> tuple[int, int]:
    """(replicas, min in-sync replicas) of the internal topics of a cluster of ``brokers``."""
    replicas = min(brokers, CONTROLLER_QUORUM)
    return replicas, max(1, replicas - 1)


def layout_problem(root: Path, brokers: int) -> str | None:
    """Why the Kafka data under ``root`` cannot serve a cluster of ``brokers`` (None: it can,
    or there is none yet). A data dir keeps the size it was formatted with: the quorum's voters
    and the internal topics' replicas are fixed then."""
    single = (root / "data" / "meta.properties").exists()
    try:
        recorded: int | None = int(
            json.loads((root / KAFKA_CLUSTER_RECORD.name).read_text())["brokers"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    have = 1 if single else recorded
    if have is None or have == brokers:
        return None
    return (
        f"{root} holds a {have}-broker Kafka cluster, not {brokers}; start it with "
        f"POSTWIRE_KAFKA_BROKERS={have} (up --brokers {have}), or use a fresh POSTWIRE_DATA_DIR"
    )


def locate_pom() -> Path:
    """The pom listing the broker artifacts: in a checkout under compose/, in a wheel packaged."""
    here = Path(__file__).resolve()
    for candidate in (
        here.parents[2] / "compose" / "kafka" / "pom.xml",
        here.with_name("kafka-pom.xml"),
    ):
        if candidate.is_file():
            return candidate
    raise StackError("the Kafka pom (compose/kafka/pom.xml) is missing from this installation")


def fetch_kafka_jars(settings: Settings) -> Path:
    """Resolve the broker jars into the cache once; later calls return at once."""
    target = settings.kafka_jars_dir
    if (target / ".complete").exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven (mvn) is needed once to fetch the Kafka jars; install it "
            "(apt-get install maven) "
            "or set POSTWIRE_KAFKA_BOOTSTRAP to use an existing Kafka cluster."
        )
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(locate_pom()),
        "dependency:copy-dependencies",
        f"-Dkafka.version={settings.kafka_version}",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        shutil.rmtree(partial, ignore_errors=True)
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise StackError(
            f"Maven could not fetch Kafka {settings.kafka_version} from Maven Central:\n{tail}"
        )
    (partial / ".complete").write_text(settings.kafka_version)
    # rename is atomic: a concurrent or interrupted fetch never leaves a half-filled cache behind
    try:
        partial.rename(target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / ".complete").exists():
            raise
    return target


def render_server_properties(
    settings: Settings, log_dir: Path, secured: SecuredListener | None = None, *, node: int = 0
) -> str:
    """server.properties of node ``node`` of the embedded cluster."""
    nodes = cluster_nodes(settings)
    me, host = nodes[node], settings.kafka_host
    listener = "PLAINTEXT" if secured is None else "SASL_SSL"
    listeners = [f"{listener}://{host}:{me.port}"]
    if me.voter:
        listeners.append(f"CONTROLLER://{host}:{me.controller_port}")
    voters = ",".join(f"{n.node_id}@{host}:{n.controller_port}" for n in nodes if n.voter)
    replicas, min_isr = internal_replication(len(nodes))
    props = {
        "process.roles": "broker,controller" if me.voter else "broker",
        "node.id": str(me.node_id),
        "controller.quorum.voters": voters,
        "listeners": ",".join(listeners),
        "advertised.listeners": f"{listener}://{host}:{me.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
        **(secured.properties() if secured is not None else {}),
        "log.dirs": str(log_dir),
        "num.partitions": str(settings.partitions),
        # the internal topics: a cluster of three keeps them writable with one broker down
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        # the default of topics that do not say (the offsets topic among them)
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
        "log.segment.bytes": str(256 * 1024 * 1024),
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


def render_log4j(log_file: Path) -> str:
    return (
        "log4j.rootLogger=INFO, file\n"
        "log4j.appender.file=org.apache.log4j.RollingFileAppender\n"
        f"log4j.appender.file.File={log_file}\n"
        "log4j.appender.file.MaxFileSize=20MB\n"
        "log4j.appender.file.MaxBackupIndex=2\n"
        "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka=INFO\n"
        "log4j.logger.org.apache.kafka=INFO\n"
        "log4j.logger.state.change.logger=WARN\n"
    )


async def wait_for_kafka(
    kafka: KafkaSettings,
    timeout: float,
    alive: ManagedProcess | Sequence[ManagedProcess] | None = None,
    *,
    brokers: int = 1,
) -> None:
    """Return once a metadata request succeeds and names ``brokers`` brokers; fail fast if a
    broker process dies or the cluster refuses the client's credentials or certificate check
    (waiting cannot mend those)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    watched = [alive] if isinstance(alive, ManagedProcess) else list(alive or ())
    # connection refusals are expected while the broker boots; aiokafka logs each one
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    options = client_options(kafka)
    try:
        while time.monotonic() < deadline:
            for proc in watched:
                if not proc.running():
                    raise StackError(
                        f"Kafka ({proc.name}) exited during start-up; its log ends:\n"
                        f"{proc.log_tail()}"
                    )
            admin = AIOKafkaAdminClient(**options, request_timeout_ms=3000)
            try:
                await admin.start()
                found = len((await admin.describe_cluster()).get("brokers") or ())
            except (KafkaError, OSError) as exc:
                last = await explain_refusal(options) or exc
                if isinstance(last, KafkaRefusedError) and last.code in _FINAL:
                    raise last from exc
                await asyncio.sleep(0.2)
            else:
                if found >= brokers:
                    return
                # a cluster answers before all its brokers registered: topics made now could
                # not get their replicas
                last = StackError(f"{found} of {brokers} brokers registered")
                await asyncio.sleep(0.2)
            finally:
                await admin.close()
    finally:
        quiet.setLevel(level)
    if isinstance(last, KafkaRefusedError):
        raise last
    raise StackError(f"Kafka at {kafka.bootstrap} did not answer within {timeout:.0f}s ({last})")


class EmbeddedKafka:
    """The embedded cluster: one ``ManagedProcess`` per node (``processes``, named like the
    nodes), started and stopped together; ``process`` is the first node's."""

    def __init__(self, settings: Settings, secured: SecuredListener | None = None) -> None:
        self.settings = settings
        self.secured = secured
        self.root = settings.data_dir / "kafka"
        self.nodes = cluster_nodes(settings)
        self.log_dir = self.nodes[0].log_dir
        self.processes = [
            ManagedProcess(
                name=node.name,
                argv=[],
                log_path=node.root / "server.out",
                tail_path=node.root / "server.log",  # log4j's; the JVM's stdout says little
                pid_path=settings.data_dir / "run" / f"{node.name}.pid",
                stop_timeout=30.0,
            )
            for node in self.nodes
        ]
        self.process = self.processes[0]

    def prepare(self) -> list[list[str]]:
        """Fetch jars, write each node's config, format storage once; return the java command
        line of each node."""
        protocol = self.settings.kafka_security_protocol
        if self.secured is None and protocol != "PLAINTEXT":
            raise StackError(
                f"the embedded Kafka broker speaks PLAINTEXT, not POSTWIRE_KAFKA_SECURITY_"
                f"PROTOCOL={protocol}; set POSTWIRE_KAFKA_BOOTSTRAP to the secured cluster"
            )
        if self.secured is not None and len(self.nodes) > 1:
            # the secured listener is tested on one node only: a cluster of them is not offered
            raise StackError("the embedded secured (SASL_SSL) listener runs on one broker only")
        java = shutil.which("java")
        if java is None:
            raise StackError(
                "java was not found on PATH; install Java 17+ (apt-get install "
                "openjdk-17-jre-headless) or set POSTWIRE_KAFKA_BOOTSTRAP to an existing cluster."
            )
        for node in self.nodes:
            ports = (node.port, node.controller_port) if node.voter else (node.port,)
            for port in ports:
                if port_in_use(self.settings.kafka_host, port):
                    raise StackError(
                        f"port {port} on {self.settings.kafka_host} is already taken; stop what "
                        "uses it, or pick free ones with POSTWIRE_KAFKA_PORT / "
                        "POSTWIRE_KAFKA_CONTROLLER_PORT (broker n uses each + 2n)."
                    )
        problem = layout_problem(self.root, len(self.nodes))
        if problem is not None:
            raise StackError(problem)
        jars = fetch_kafka_jars(self.settings)
        commands = []
        cluster_id: str | None = None
        for node in self.nodes:
            node.root.mkdir(parents=True, exist_ok=True)
            props = node.root / "server.properties"
            # it may hold the PLAIN users' passwords
            text = render_server_properties(
                self.settings, node.log_dir, self.secured, node=node.index
            )
            write_private(props, text.encode())
            log4j = node.root / "log4j.properties"
            log4j.write_text(render_log4j(node.root / "server.log"))
            base = [
                java,
                f"-Xmx{self.settings.kafka_heap}",
                f"-Xms{self.settings.kafka_heap}",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{log4j}",
                "-cp",
                f"{jars}/*",
            ]
            if not (node.log_dir / "meta.properties").exists():
                cluster_id = cluster_id or self._cluster_id()
                self._format(base, props, cluster_id)
            commands.append([*base, "kafka.Kafka", str(props)])
        return commands

    def _cluster_id(self) -> str:
        """One id for every node: a cluster's is kept beside its nodes (written before the
        first is formatted, so a start interrupted between two formats goes on with it)."""
        if len(self.nodes) == 1:
            return _kafka_cluster_id()
        record = self.settings.data_dir / KAFKA_CLUSTER_RECORD
        try:
            return str(json.loads(record.read_text())["cluster_id"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        cluster_id = _kafka_cluster_id()
        record.write_text(json.dumps({"cluster_id": cluster_id, "brokers": len(self.nodes)}))
        return cluster_id

    def _format(self, base: list[str], props: Path, cluster_id: str) -> None:
        # "--cluster-id=X": an id may start with "-", which argparse would take for an option
        cmd = [
            *base,
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "-c",
            str(props),
            # the SCRAM users of a secured listener: the tool takes them on its command line
            # only, so they show in the process list for the second it runs
            *(self.secured.scram_arguments() if self.secured is not None else ()),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")

    def start(self, *, detach: bool) -> int:
        """Start every node; return the first one's pid."""
        for proc, argv in zip(self.processes, self.prepare(), strict=True):
            proc.argv = argv
        try:
            for proc in self.processes:
                proc.start(detach=detach)
        except BaseException:
            self.stop()
            raise
        return self.processes[0].pid or 0

    async def wait_ready(self) -> None:
        await wait_for_kafka(
            self.settings.kafka,
            self.settings.kafka_start_timeout,
            alive=self.processes,
            brokers=len(self.nodes),
        )

    def stop(self) -> None:
        """Stop every node at once: one by one, the last ones would wait for a quorum the
        first ones took with them."""
        with ThreadPoolExecutor(max_workers=len(self.processes)) as pool:
            list(pool.map(ManagedProcess.stop, self.processes))


def _kafka_cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding (Uuid.randomUuid)
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
