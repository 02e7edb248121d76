"""The streams of the architecture: their names and how they are created.

Requests, scores, results and outcomes are *co-partitioned*: they have the same
partition count, and everything about one request lives in the same partition
number of each. Model runners write a request's score to the partition number
the request came from, and the rendezvous writes its result there too, so the
join never depends on which key partitioner a client used.

>>> t = Topics.with_prefix("shop")
>>> t.requests, t.scores, t.deadletter
('shop.requests', 'shop.scores', 'shop.deadletter')
"""

from __future__ import annotations

from dataclasses import dataclass, fields

DEFAULT_PREFIX = "rendezvous"
#: Request header naming the topic (one of ``Topics.replies``) where the worker also writes the result,
#: so that a gateway reads only its own callers' results, not the whole results topic.
REPLY_TO = "rendezvous.reply-to"
DEFAULT_PARTITIONS = 4


@dataclass(frozen=True)
class Topics:
    """Names of every topic the system reads or writes."""

    requests: str = f"{DEFAULT_PREFIX}.requests"
    scores: str = f"{DEFAULT_PREFIX}.scores"
    results: str = f"{DEFAULT_PREFIX}.results"
    outcomes: str = f"{DEFAULT_PREFIX}.outcomes"
    deadletter: str = f"{DEFAULT_PREFIX}.deadletter"
    policies: str = f"{DEFAULT_PREFIX}.policies"
    bandit: str = f"{DEFAULT_PREFIX}.bandit"
    #: Names the deployment's consumer groups, so deployments sharing a cluster never share a group.
    namespace: str = DEFAULT_PREFIX

    @classmethod
    def with_prefix(cls, prefix: str = DEFAULT_PREFIX) -> Topics:
        return cls(**{f.name: f"{prefix}.{f.name}" for f in fields(cls) if f.name != "namespace"}, namespace=prefix)

    def group(self, role: str) -> str:
        """The consumer group of one role, e.g. ``rendezvous.model.boosted.1.0.0`` or ``rendezvous.decoy``."""
        return f"{self.namespace}.{role}"

    @property
    def copartitioned(self) -> tuple[str, ...]:
        """Topics that must share one partition count."""
        return (self.requests, self.scores, self.results, self.outcomes)

    @property
    def single_partition(self) -> tuple[str, ...]:
        """Small control topics every worker reads whole (policies, bandit state)."""
        return (self.policies, self.bandit)

    def replies(self, gateway: str) -> str:
        """The topic one gateway instance reads its callers' results from (see REPLY_TO)."""
        return f"{self.namespace}.replies.{gateway}"

    def is_reply_topic(self, topic: str) -> bool:
        return topic.startswith(f"{self.namespace}.replies.") and len(topic) > len(self.namespace) + 9

    def all(self) -> tuple[str, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "namespace")
