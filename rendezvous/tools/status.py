"""``rendezvous status``: what runs in a stack, where, and with which policy, in one read.

Gathered from the broker alone, so it works from any shell and for any runtime
(processes, containers, other hosts): the policy in force from the policies topic,
and every service instance from the presence topic
(:mod:`rendezvous.kernel.presence`), with the URLs it serves and, for a worker,
the policy version it has adopted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from policies.record import PolicyRecord
from policies.schema import Policy
from rendezvous.kernel.clock import now_ms
from rendezvous.kernel.presence import Presence, read_presence
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.trust import StackSecret
from rendezvous.tools.inventory import policy_history

__all__ = ["StackStatus", "await_adoption", "stack_status"]

#: The order roles are listed in: the request path's order.
ROLES = ("rendezvous", "model", "decoy", "gateway")


@dataclass
class StackStatus:
    broker: str
    policy: Policy | None
    applied: PolicyRecord | None
    instances: list[Presence]
    at_ms: float

    def alive(self) -> list[Presence]:
        return [p for p in self.instances if p.alive(self.at_ms)]

    def gone(self) -> list[Presence]:
        return [p for p in self.instances if not p.alive(self.at_ms)]

    def behind(self) -> list[Presence]:
        """Live workers that have not adopted the policy in force (yet)."""
        if self.policy is None:
            return []
        return [p for p in self.alive() if p.role == "rendezvous"
                and p.details.get("policy_version") != self.policy.version]

    def as_dict(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "policy": None if self.policy is None else {
                "name": self.policy.name, "version": self.policy.version, "sla_ms": self.policy.sla_ms,
                "applied_ms": self.applied.applied_ms if self.applied else None,
                "by": self.applied.by if self.applied else None},
            "instances": [{"role": p.role, "name": p.name, "instance": p.instance, "host": p.host, "pid": p.pid,
                           "urls": p.urls, "details": p.details, "alive": p.alive(self.at_ms),
                           "last_seen_s": round((self.at_ms - p.at_ms) / 1000, 1),
                           "up_s": round(((self.at_ms if p.alive(self.at_ms) else p.at_ms) - p.started_ms) / 1000, 1)}
                          for p in self.instances],
            "workers_behind": [p.instance for p in self.behind()],
        }


def stack_status(kafka: KafkaSettings, topics: Topics, secret: StackSecret | None = None,
                 timeout_s: float = 10.0) -> StackStatus:
    history = policy_history(kafka, topics, secret)
    policy, applied = history[-1] if history else (None, None)
    instances = read_presence(kafka, topics, timeout_s)
    instances.sort(key=lambda p: (ROLES.index(p.role) if p.role in ROLES else len(ROLES), p.name, p.instance))
    return StackStatus(kafka.bootstrap, policy, applied, instances, now_ms())


def await_adoption(kafka: KafkaSettings, topics: Topics, version: int, timeout_s: float,
                   every_s: float = 0.3) -> tuple[list[Presence], list[Presence]]:
    """Wait until every live worker says it has ``version`` (or a later one) in force, or ``timeout_s`` passes.

    Returns the live workers that have it and those that do not (yet): a worker that refused the version (a
    bad signature) or cannot reach the broker stays behind.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        at = now_ms()
        workers = [p for p in read_presence(kafka, topics) if p.role == "rendezvous" and p.alive(at)]
        adopted = [p for p in workers if (p.details.get("policy_version") or 0) >= version]
        behind = [p for p in workers if p not in adopted]
        if not behind or time.monotonic() + every_s > deadline:
            return adopted, behind
        time.sleep(every_s)
