"""Embedded single-node Apache Kafka (KRaft), run from Maven Central jars on the local Java.

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
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from streams.errors import ConfigError, KafkaRefusedError, StackError
from streams.kafka.config import KafkaSettings, client_options
from streams.kafka.connect import explain_refusal
from streams.secret import write_private
from streams.settings import Settings
from streams.stack.process import ManagedProcess, port_in_use
from streams.stack.tls import TlsFiles

__all__ = [
    "SCRAM_MECHANISMS",
    "EmbeddedKafka",
    "SecuredListener",
    "fetch_kafka_jars",
    "locate_pom",
    "render_log4j",
    "render_server_properties",
    "wait_for_kafka",
]

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
# the storage tool parses "[name=...,password=...]" without quoting, and the JAAS lines quote
# values with '"': names and passwords stay inside a charset neither can misread
_CREDENTIAL = re.compile(r"[A-Za-z0-9._~-]{1,128}")
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
    settings: Settings, log_dir: Path, secured: SecuredListener | None = None
) -> str:
    host, port, cport = settings.kafka_host, settings.kafka_port, settings.kafka_controller_port
    listener = "PLAINTEXT" if secured is None else "SASL_SSL"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{cport}",
        "listeners": f"{listener}://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"{listener}://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
        **(secured.properties() if secured is not None else {}),
        "log.dirs": str(log_dir),
        "num.partitions": str(settings.partitions),
        # single node: every internal topic has one replica
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
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
    kafka: KafkaSettings, timeout: float, alive: ManagedProcess | None = None
) -> None:
    """Return once a metadata request succeeds; fail fast if the broker process dies or
    refuses the client's credentials or certificate check (waiting cannot mend those)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    # connection refusals are expected while the broker boots; aiokafka logs each one
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    options = client_options(kafka)
    try:
        while time.monotonic() < deadline:
            if alive is not None and not alive.running():
                raise StackError(f"Kafka exited during start-up; its log ends:\n{alive.log_tail()}")
            admin = AIOKafkaAdminClient(**options, request_timeout_ms=3000)
            try:
                await admin.start()
                await admin.describe_cluster()
            except (KafkaError, OSError) as exc:
                last = await explain_refusal(options) or exc
                if isinstance(last, KafkaRefusedError) and last.code in _FINAL:
                    raise last from exc
                await asyncio.sleep(0.2)
            else:
                return
            finally:
                await admin.close()
    finally:
        quiet.setLevel(level)
    if isinstance(last, KafkaRefusedError):
        raise last
    raise StackError(f"Kafka at {kafka.bootstrap} did not answer within {timeout:.0f}s ({last})")


class EmbeddedKafka:
    def __init__(self, settings: Settings, secured: SecuredListener | None = None) -> None:
        self.settings = settings
        self.secured = secured
        self.root = settings.data_dir / "kafka"
        self.log_dir = self.root / "data"
        self.process = ManagedProcess(
            name="kafka",
            argv=[],
            log_path=self.root / "server.out",
            pid_path=settings.data_dir / "run" / "kafka.pid",
            stop_timeout=30.0,
        )

    def prepare(self) -> list[str]:
        """Fetch jars, write config, format storage once; return the java command line."""
        protocol = self.settings.kafka_security_protocol
        if self.secured is None and protocol != "PLAINTEXT":
            raise StackError(
                f"the embedded Kafka broker speaks PLAINTEXT, not POSTWIRE_KAFKA_SECURITY_"
                f"PROTOCOL={protocol}; set POSTWIRE_KAFKA_BOOTSTRAP to the secured cluster"
            )
        java = shutil.which("java")
        if java is None:
            raise StackError(
                "java was not found on PATH; install Java 17+ (apt-get install "
                "openjdk-17-jre-headless) or set POSTWIRE_KAFKA_BOOTSTRAP to an existing cluster."
            )
        for port in (self.settings.kafka_port, self.settings.kafka_controller_port):
            if port_in_use(self.settings.kafka_host, port):
                raise StackError(
                    f"port {port} on {self.settings.kafka_host} is already taken; stop what uses "
                    "it, or pick free ones with POSTWIRE_KAFKA_PORT / "
                    "POSTWIRE_KAFKA_CONTROLLER_PORT."
                )
        jars = fetch_kafka_jars(self.settings)
        self.root.mkdir(parents=True, exist_ok=True)
        props = self.root / "server.properties"
        # it may hold the PLAIN users' passwords
        write_private(
            props, render_server_properties(self.settings, self.log_dir, self.secured).encode()
        )
        log4j = self.root / "log4j.properties"
        log4j.write_text(render_log4j(self.root / "server.log"))
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
        if not (self.log_dir / "meta.properties").exists():
            self._format(base, props)
        return [*base, "kafka.Kafka", str(props)]

    def _format(self, base: list[str], props: Path) -> None:
        cluster_id = _kafka_cluster_id()
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
        self.process.argv = self.prepare()
        return self.process.start(detach=detach)

    async def wait_ready(self) -> None:
        await wait_for_kafka(
            self.settings.kafka, self.settings.kafka_start_timeout, alive=self.process
        )

    def stop(self) -> None:
        self.process.stop()


def _kafka_cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding (Uuid.randomUuid)
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
