"""Client settings shared by every component, with defaults tuned for low latency.

Why the fetch wait matters: a Kafka consumer's fetch request waits on the broker
up to ``fetch.wait.max.ms`` for data. Apache Kafka answers it as soon as data
arrives, so a long wait costs no latency and keeps idle consumers cheap: the
default is Kafka's own, 500 ms. Tansu (the embedded engine for machines without
Java) holds every fetch for the full wait, so on Tansu each hop costs up to that
long: the stack runs its consumers with 5 ms there (``--fetch-wait-ms``).

Producer linger is 0 by default: every record leaves at once. Measured on the
live system (benchmarks/README.md), lingering did not lower the embedded broker's
load enough to matter, since our records are keyed or sent to explicit partitions
and batches stay small, while it added its full value to every hop. Raise it
(``--producer-linger-ms``) for unkeyed high-rate producers on a real cluster.

Security (TLS, SASL) comes from a :class:`~rendezvous.kernel.client_config.ClientConfig`
and reaches every client built from these settings; ``repr`` never shows a secret.

>>> KafkaSettings("127.0.0.1:9092").consumer("g")["fetch.wait.max.ms"]
500
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rendezvous.kernel.client_config import ClientConfig
from rendezvous.kernel.logs import KAFKA_CLIENT_LOG

__all__ = ["KafkaSettings", "state_dir", "DEFAULT_FETCH_WAIT_MS", "DEFAULT_PRODUCER_LINGER_MS",
           "DEFAULT_SESSION_TIMEOUT_MS", "BACKGROUND_FETCH_WAIT_MS"]

DEFAULT_FETCH_WAIT_MS = 500
DEFAULT_PRODUCER_LINGER_MS = 0
#: For consumers off the request path (control topics, the decoy, a gateway's policy follower)
#: at least this: on Tansu an idle consumer costs one fetch per wait, so these wait longer than
#: the request path's 5 ms there (a policy still reaches every worker well within a second).
BACKGROUND_FETCH_WAIT_MS = 100
DEFAULT_SESSION_TIMEOUT_MS = 6000  # Kafka's smallest allowed: a dead member is noticed soonest


def state_dir() -> Path:
    """Where rendezvous keeps machine-local state (the embedded broker's address)."""
    return Path(os.environ.get("RENDEZVOUS_HOME", Path.home() / ".rendezvous"))


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach the broker, and the client tuning every component uses."""

    bootstrap: str
    fetch_wait_ms: int = DEFAULT_FETCH_WAIT_MS
    fetch_min_bytes: int = 1
    producer_linger_ms: float = DEFAULT_PRODUCER_LINGER_MS
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS
    client: ClientConfig = field(default_factory=ClientConfig)  # security: TLS, SASL

    def producer(self, **overrides: Any) -> dict[str, Any]:
        """A confluent-kafka producer config: idempotent, ordered per partition, briefly lingering."""
        return {
            "bootstrap.servers": self.bootstrap,
            "linger.ms": self.producer_linger_ms,
            "enable.idempotence": True,  # a retry never duplicates or reorders a record
            "queue.buffering.max.messages": 1_000_000,
            "log_level": 3,
            "logger": KAFKA_CLIENT_LOG,  # through Python logging, where repeats are held back
            **self.client.confluent(),
            **overrides,
        }

    def consumer(self, group: str, **overrides: Any) -> dict[str, Any]:
        """A confluent-kafka consumer config for a member of ``group``."""
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,  # we store an offset once its work is durable
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(self.session_timeout_ms // 6, 500),
            "fetch.wait.max.ms": self.fetch_wait_ms,
            "fetch.min.bytes": self.fetch_min_bytes,
            "log_level": 3,
            "logger": KAFKA_CLIENT_LOG,  # through Python logging, where repeats are held back
            **self.client.confluent(),
            **overrides,
        }

    def admin(self) -> dict[str, Any]:
        # no Python logger here: an admin client's log lines wait in a queue until it is polled,
        # and most admin clients never are (librdkafka writes them to stderr instead)
        return {"bootstrap.servers": self.bootstrap, "log_level": 3, **self.client.confluent()}
