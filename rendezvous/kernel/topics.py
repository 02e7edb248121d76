"""The streams of the architecture: their names and how they are created.

Requests, scores, results and outcomes are *co-partitioned*: they have the same
partition count, and everything about one request lives in the same partition
number of each. Model runners write a request's score to the partition number
the request came from, and the rendezvous writes its result there too, so the
join never depends on which key partitioner a client used.

>>> t = Topics.with_prefix("shop")
>>> t.requests, t.scores, t.deadletter
('shop.requests', 'shop.scores', 'shop.deadletter')

Every topic is created with a retention that fits its role: the request path keeps
an hour (``--retention-minutes``; the decoy archives the inputs for longer), the
dead letters and the bandit's state a week, the policies for ever (compacted).

>>> t.config(t.scores, retention_ms=60_000)
{'retention.ms': '60000', 'segment.ms': '60000'}
>>> t.config(t.results)["message.timestamp.type"]
'LogAppendTime'
>>> t.config(t.policies, retention_ms=60_000)
{'cleanup.policy': 'compact'}
>>> t.config(t.presence)["cleanup.policy"]
'compact,delete'
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "DEFAULT_PREFIX", "REPLY_TO", "PROBE", "DEFAULT_PARTITIONS", "DEFAULT_RETENTION_MS", "CONTROL_RETENTION_MS",
    "PRESENCE_RETENTION_MS", "retention_config", "Topics",
]

DEFAULT_PREFIX = "rendezvous"
#: Request header naming the topic (one of ``Topics.replies``) where the worker also writes the result,
#: so that a gateway reads only its own callers' results, not the whole results topic.
REPLY_TO = "rendezvous.reply-to"
#: Request header marking a gateway's readiness probe: the worker answers it at once on the reply topic
#: only, and it is no traffic (no result record, no SLA metric, no learning); model runners skip it.
PROBE = "rendezvous.probe"
DEFAULT_PARTITIONS = 4
#: How long the request path's topics keep a record by default: an hour.
DEFAULT_RETENTION_MS = 3_600_000
#: Dead letters and the bandit's state: long enough for someone to look, a week.
CONTROL_RETENTION_MS = 7 * 24 * 3_600_000
#: Presence records of instances killed without deleting theirs: a day.
PRESENCE_RETENTION_MS = 24 * 3_600_000
#: A segment rolls at least this often, so that retention can delete it.
_SEGMENT_MS = 600_000


def retention_config(retention_ms: int) -> dict[str, str]:
    """Keep records ``retention_ms``; segments roll often enough for retention to delete them."""
    return {"retention.ms": str(retention_ms), "segment.ms": str(min(retention_ms, _SEGMENT_MS))}


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
    #: Who is running, where: one record per service instance (see rendezvous.kernel.presence).
    presence: str = f"{DEFAULT_PREFIX}.presence"
    #: Names the deployment's consumer groups, so deployments sharing a cluster never share a group.
    namespace: str = DEFAULT_PREFIX

    @classmethod
    def with_prefix(cls, prefix: str = DEFAULT_PREFIX) -> Topics:
        return cls(**{f.name: f"{prefix}.{f.name}" for f in fields(cls) if f.name != "namespace"}, namespace=prefix)

    def group(self, role: str) -> str:
        """The consumer group of one role, e.g. ``rendezvous.model.boosted.1.0.0`` or ``rendezvous.decoy``."""
        return f"{self.namespace}.{role}"

    def reader_group(self, kind: str) -> str:
        """A group of its own for a reader that never commits (a client, ``explain``, a status probe): under
        ``NAMESPACE.readers.``, so that one ACL on that prefix lets them in (librdkafka still asks the broker
        for their group's coordinator).

        >>> Topics.with_prefix("shop").reader_group("explain").startswith("shop.readers.explain-")
        True
        """
        return f"{self.namespace}.readers.{kind}-{os.getpid()}-{time.time_ns()}"

    @property
    def copartitioned(self) -> tuple[str, ...]:
        """Topics that must share one partition count."""
        return (self.requests, self.scores, self.results, self.outcomes)

    @property
    def single_partition(self) -> tuple[str, ...]:
        """Small control topics read whole (policies, bandit state, presence)."""
        return (self.policies, self.bandit, self.presence)

    def config(self, topic: str, retention_ms: int = DEFAULT_RETENTION_MS) -> dict[str, str]:
        """The topic configuration it is created with (retention by role; the policies compacted)."""
        if topic == self.policies:
            return {"cleanup.policy": "compact"}
        if topic == self.presence:  # the latest record of each instance; a killed one's ages out in a day
            return {"cleanup.policy": "compact,delete", **retention_config(PRESENCE_RETENTION_MS)}
        keep = CONTROL_RETENTION_MS if topic in (self.deadletter, self.bandit) else retention_ms
        config = retention_config(keep)
        if topic == self.results:  # a result's timestamp is when the broker wrote it: when the SLA is judged
            config["message.timestamp.type"] = "LogAppendTime"
        return config

    def replies(self, gateway: str) -> str:
        """The topic one gateway instance reads its callers' results from (see REPLY_TO)."""
        return f"{self.namespace}.replies.{gateway}"

    def reply_route(self, headers: Any) -> tuple[str | None, str | None, bool]:
        """From a request's headers (pairs or a dict): the reply topic a gateway named if it is one of ours,
        the one named if it is not (to be ignored), and whether the request is a probe.

        >>> t = Topics.with_prefix("shop")
        >>> t.reply_route([(REPLY_TO, b"shop.replies.gw1")]), t.reply_route({REPLY_TO: b"elsewhere", PROBE: b""})
        (('shop.replies.gw1', None, False), (None, 'elsewhere', True))
        """
        topic, foreign, probe = None, None, False
        for key, value in (headers.items() if isinstance(headers, dict) else headers or ()):
            if key == PROBE:
                probe = True
            elif key == REPLY_TO and value:
                named = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                topic, foreign = (named, None) if self.is_reply_topic(named) else (None, named)
        return topic, foreign, probe

    def is_reply_topic(self, topic: str) -> bool:
        return topic.startswith(f"{self.namespace}.replies.") and len(topic) > len(self.namespace) + 9

    def all(self) -> tuple[str, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "namespace")
