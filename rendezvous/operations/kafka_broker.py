"""The Apache Kafka engine: a single-node Kafka 4.x in KRaft mode, one JVM on loopback.

It is the default wherever Java 17+ runs and its jars are fetched
(:func:`~rendezvous.operations.kafka_dist.kafka_available`), because it does what
the product relies on: a fetch is answered as soon as a record arrives (so consumers
can wait long and cost the idle broker nothing), topics have retention, logs are
durable across restarts, and TLS and SASL/SCRAM work.

The node is broker and controller at once. Its storage is formatted on first
start; a ``data_dir`` that already holds a formatted node is reused, so a restart
keeps every acknowledged record and committed offset. Without ``data_dir`` the
broker lives in a temporary directory, removed when it stops.

The settings below are for one small machine: two network and two I/O threads,
a 256 MB heap with G1, few internal partitions (a faster first start), no delay
before the first rebalance, and retention that keeps a long-running stack small.

>>> props = KafkaBroker(port=9092).properties(Path("/data"), controller_port=9093)
>>> props["listeners"], props["log.retention.ms"]
('PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093', '3600000')
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from rendezvous.kernel.topics import DEFAULT_RETENTION_MS
from rendezvous.operations.embedded import LOOPBACK, BrokerError, EmbeddedBroker, free_port
from rendezvous.operations.kafka_dist import KAFKA_VERSION, LOG4J_CONFIG, KafkaDistError, jar_dir, java_binary, verify_jars

__all__ = ["KafkaBroker", "SecureListener", "DEFAULT_JVM_OPTS", "JVM_OPTS_ENV"]

JVM_OPTS_ENV = "RENDEZVOUS_BROKER_JVM_OPTS"
#: G1 with short pauses (Kafka's own choice) in a heap sized for one small machine.
DEFAULT_JVM_OPTS = ("-Xms256m -Xmx256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 "
                    "-XX:+ExplicitGCInvokesConcurrent -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1 "
                    "-XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true")
_NODE_ID = 1
_SECURE = "SECURE"  # the name of the TLS listener in server.properties


@dataclass(frozen=True)
class SecureListener:
    """A TLS listener beside the loopback PLAINTEXT one: SSL, or SASL_SSL with SCRAM when ``sasl``.

    ``keystore``: a PEM file with the server's private key (PKCS#8, unencrypted) and its
    certificate chain. ``client_ca``: a PEM CA; when given, clients must present a
    certificate it signed (mutual TLS). SCRAM users are added once the broker runs
    (:meth:`KafkaBroker.add_scram_user`).
    """

    keystore: Path
    client_ca: Path | None = None
    sasl: str | None = None  # a SCRAM mechanism: SCRAM-SHA-512 or SCRAM-SHA-256
    port: int = 0  # 0: a free one

    @property
    def protocol(self) -> str:
        return "SASL_SSL" if self.sasl else "SSL"

    def properties(self, host: str, port: int) -> dict[str, str]:
        name = f"listener.name.{_SECURE.lower()}"
        props = {
            f"{name}.ssl.keystore.type": "PEM",
            f"{name}.ssl.keystore.location": str(self.keystore),
        }
        if self.client_ca is not None:
            props.update({f"{name}.ssl.truststore.type": "PEM", f"{name}.ssl.truststore.location": str(self.client_ca),
                          f"{name}.ssl.client.auth": "required"})
        if self.sasl:
            module = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            props.update({"sasl.enabled.mechanisms": self.sasl,
                          f"{name}.{self.sasl.lower()}.sasl.jaas.config": module})
        return props


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, not starting with '-'."""
    while True:
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster.startswith("-"):
            return cluster


class KafkaBroker(EmbeddedBroker):
    """Apache Kafka (KRaft, one node) on loopback.

    ``data_dir``: where its logs live, kept across restarts (None: a temporary
    directory, removed at stop). ``retention_ms``: the broker's default retention.
    ``properties_extra``: more ``server.properties`` lines (listeners for TLS/SASL, say).
    """

    engine = "kafka"
    fetch_wait_ms = 500  # Kafka answers a waiting fetch when a record arrives

    def __init__(self, port: int = 0, host: str = LOOPBACK, log_path: Path | None = None,
                 data_dir: Path | None = None, retention_ms: int = DEFAULT_RETENTION_MS,
                 jvm_opts: str | None = None, properties_extra: dict[str, str] | None = None,
                 secure: SecureListener | None = None, advertised_host: str | None = None) -> None:
        super().__init__(port=port, host=host, log_path=log_path, advertised_host=advertised_host)
        self.secure, self.secure_port = secure, 0
        self.data_dir, self.retention_ms = data_dir, retention_ms
        self.jvm_opts = jvm_opts if jvm_opts is not None else os.environ.get(JVM_OPTS_ENV, DEFAULT_JVM_OPTS)
        self.properties_extra = dict(properties_extra or {})
        self.controller_port = 0
        self._temporary: Path | None = None

    def describe(self) -> str:
        where = self.data_dir if self.data_dir is not None else "a temporary directory"
        return f"Apache Kafka {KAFKA_VERSION}, data in {where}"

    @property
    def secure_bootstrap(self) -> str:
        """The TLS listener's address (with a :class:`SecureListener`)."""
        return f"{self.advertised_host}:{self.secure_port}"

    def add_scram_user(self, user: str, password: str, mechanism: str = "SCRAM-SHA-512", timeout: float = 15.0) -> None:
        """Create or update a SCRAM user (over the loopback PLAINTEXT listener, which needs no login)."""
        admin = AdminClient({"bootstrap.servers": f"{self.local_host}:{self.port}", "log_level": 0})
        upsert = UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism[mechanism.replace("-", "_")], 8192),
                                              password.encode())
        for future in admin.alter_user_scram_credentials([upsert], request_timeout=timeout).values():
            future.result(timeout)

    def properties(self, data: Path, controller_port: int) -> dict[str, str]:
        """The node's ``server.properties``."""
        listeners = [f"PLAINTEXT://{self.host}:{self.port}"]
        advertised = [f"PLAINTEXT://{self.advertised_host}:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if self.secure is not None:
            listeners.append(f"{_SECURE}://{self.host}:{self.secure_port}")
            advertised.append(f"{_SECURE}://{self.advertised_host}:{self.secure_port}")
            protocols.append(f"{_SECURE}:{self.secure.protocol}")
        props = {
            "process.roles": "broker,controller",
            "node.id": str(_NODE_ID),
            "controller.quorum.voters": f"{_NODE_ID}@{LOOPBACK}:{controller_port}",  # the node talks to itself
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join([*listeners, f"CONTROLLER://{LOOPBACK}:{controller_port}"]),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(data / "logs"),
            # one node: every internal topic has one replica, and few partitions start faster
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",  # no 3 s wait before a group's first assignment
            # Killed, the node comes back as a new incarnation that its own controller accepts only once
            # the old one's broker session (9 s by default) has run out: started after a SIGKILL it took
            # 11.9 s to serve (2 s session: 3.9 s), 1.9 s after a SIGTERM. Its controller is in the same
            # process, so only a stall of the whole JVM for 3 s would fence it.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            # a small machine: few threads, a small cleaner buffer (the default is 128 MB)
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            # retention: old segments go; a segment rolls every 10 minutes so that they can
            "log.retention.ms": str(self.retention_ms),
            "log.roll.ms": str(min(600_000, self.retention_ms)),
            "log.segment.bytes": str(64 * 1024 * 1024),
            "log.retention.check.interval.ms": "60000",
        }
        if self.secure is not None:
            props.update(self.secure.properties(self.host, self.secure_port))
        props.update(self.properties_extra)
        return props

    # ------------------------------------------------------------------ engine hooks

    def _ports(self) -> list[int]:
        return [self.port, self.controller_port, *([self.secure_port] if self.secure else [])]

    def _launch(self, port: int) -> list[str]:
        java = java_binary()
        if java is None:
            raise BrokerError("the Kafka engine needs Java 17 or newer, and none is installed",
                              hint="install a JDK (Debian: openjdk-17-jre-headless), or use --engine tansu")
        try:
            verify_jars()
        except KafkaDistError as exc:
            raise BrokerError(str(exc), hint=exc.hint) from None
        if self.data_dir is None:
            self._temporary = Path(tempfile.mkdtemp(prefix="rendezvous-kafka-"))
        data = self.data_dir if self.data_dir is not None else self._temporary
        assert data is not None
        data.mkdir(parents=True, exist_ok=True)
        self.controller_port = free_port(LOOPBACK, avoid={port})
        if self.secure is not None:
            self.secure_port = self.secure.port or free_port(self.host, avoid={port, self.controller_port})
        config = data / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties(data, self.controller_port).items()))
        classpath = [java, *shlex.split(self.jvm_opts), f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
                     "-cp", f"{jar_dir()}/*"]
        if not (data / "logs" / "meta.properties").exists():
            self._format(classpath, config)
        return [str(a) for a in classpath] + ["kafka.Kafka", str(config)]

    def _format(self, classpath: list[str | Path], config: Path) -> None:
        done = subprocess.run([*map(str, classpath), "kafka.tools.StorageTool", "format", "--ignore-formatted",
                               "--cluster-id", new_cluster_id(), "--config", str(config)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BrokerError(f"formatting the Kafka storage in {config.parent} failed: "
                              f"{(done.stdout + done.stderr).strip()[-500:]}")

    def _serving(self) -> bool:
        """The node answers metadata requests and names itself as a broker (it is unfenced)."""
        admin = AdminClient({"bootstrap.servers": f"{self.local_host}:{self.port}", "log_level": 0})
        try:
            return bool(admin.list_topics(timeout=2).brokers)
        except KafkaException:
            return False

    def _cleanup(self) -> None:
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None
