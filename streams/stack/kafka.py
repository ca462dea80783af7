"""Embedded single-node Apache Kafka (KRaft), run from Maven Central jars on the local Java."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.errors import StackError
from streams.settings import Settings
from streams.stack.process import ManagedProcess, port_in_use

__all__ = [
    "EmbeddedKafka",
    "fetch_kafka_jars",
    "locate_pom",
    "render_log4j",
    "render_server_properties",
    "wait_for_kafka",
]


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


def render_server_properties(settings: Settings, log_dir: Path) -> str:
    host, port, cport = settings.kafka_host, settings.kafka_port, settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{cport}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
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
    bootstrap: str, timeout: float, alive: ManagedProcess | None = None
) -> None:
    """Return once a metadata request succeeds; fail fast if the broker process dies."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    # connection refusals are expected while the broker boots; aiokafka logs each one
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        while time.monotonic() < deadline:
            if alive is not None and not alive.running():
                raise StackError(f"Kafka exited during start-up; its log ends:\n{alive.log_tail()}")
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                await admin.describe_cluster()
            except (KafkaError, OSError) as exc:
                last = exc
                await asyncio.sleep(0.2)
            else:
                return
            finally:
                await admin.close()
    finally:
        quiet.setLevel(level)
    raise StackError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s ({last})")


class EmbeddedKafka:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
        props.write_text(render_server_properties(self.settings, self.log_dir))
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
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")

    def start(self, *, detach: bool) -> int:
        self.process.argv = self.prepare()
        return self.process.start(detach=detach)

    async def wait_ready(self) -> None:
        await wait_for_kafka(
            self.settings.bootstrap, self.settings.kafka_start_timeout, alive=self.process
        )

    def stop(self) -> None:
        self.process.stop()


def _kafka_cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding (Uuid.randomUuid)
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
