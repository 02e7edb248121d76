"""How one rendezvous worker is configured: Kafka, topics, its identity and its limits."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from rendezvous.kernel.lifecycle import DEFAULT_STOP_GRACE_S
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.trust import StackSecret
from rendezvous.kernel.wire import DEFAULT_MAX_REQUEST_BYTES
from rendezvous.routing.router import RouterLimits

__all__ = ["ServiceSettings", "DEFAULT_SLA_GUARD_MS"]

DEFAULT_SLA_GUARD_MS = 5.0


@dataclass(frozen=True)
class ServiceSettings:
    kafka: KafkaSettings
    topics: Topics = Topics()
    app_id: str = "rendezvous"  # the consumer group shared by all workers of a deployment
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}/{os.getpid()}")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    limits: RouterLimits = RouterLimits()
    #: The last decision is taken this long before the SLA, so the answer is written by then
    #: (pays for a timer firing late and the write to Kafka; see rendezvous.routing.plan).
    sla_guard_ms: float = DEFAULT_SLA_GUARD_MS
    #: Verifies what steers the worker (policies, scores, bandit records); None: nothing is checked.
    secret: StackSecret | None = None
    stop_grace_s: float = DEFAULT_STOP_GRACE_S  # after SIGTERM the worker exits within this, whatever the broker does
    recovery_lookback_ms: int = 60_000  # clock skew allowed between clients and workers
    catch_up_timeout_s: float = 5.0
    outcome_index_size: int = 500_000  # answered requests whose scores await an outcome
    outcome_rebuild_s: float = 3600.0  # after a takeover, re-index the results of the last hour
    #: Read every partition a second time and cover a lost peer's partitions at once (rendezvous.service.failover).
    standby: bool = True
