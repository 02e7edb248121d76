"""The control topics every worker reads whole: policies and bandit observations.

Unlike requests, these are not split between workers: each worker must see every
policy version and every observation, so it assigns itself all their partitions
(no consumer group) and reads them on a thread of its own. The worker's event
loop takes what was read with :meth:`ControlFeed.drain`.

Record formats (JSON):

- ``PREFIX.policies`` (compacted, key ``policy``):
  ``{"policy": {...the policy document...}, "applied_ms": 0, "by": "user@host", "reason": "..."}``
- ``PREFIX.bandit``: ``{"worker": "...", "observations": [[request_id, model, reward, t_ms], ...]}``
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import Consumer, TopicPartition

from policies.record import POLICY_KEY, PolicyRecord, decode_policy_record  # noqa: F401 - re-exported
from rendezvous.kernel.errors import BrokerUnavailable
from rendezvous.kernel.kafka import CONFLUENT, KafkaClients, poll_batch, since_offsets
from rendezvous.kernel.settings import BACKGROUND_FETCH_WAIT_MS, KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.trust import signature_of, verify
from rendezvous.routing.bandit import Observation

__all__ = ["BanditRecord", "decode_bandit_record", "Drained", "ControlFeed"]

log = logging.getLogger("rendezvous.control")

class BanditRecord(msgspec.Struct):
    worker: str
    observations: list[tuple[str, str, float, float]]


_bandit_decoder = msgspec.json.Decoder(BanditRecord)


def decode_bandit_record(data: bytes) -> BanditRecord:
    return _bandit_decoder.decode(data)


@dataclass
class Drained:
    #: (value, record ms, signature header), oldest first
    policies: list[tuple[bytes, float, bytes | None]] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    undecodable: int = 0
    unsigned: int = 0  # bandit records refused: not signed with the worker key


def _read_to_end(consumer: Consumer, out: Drained, ends: dict[tuple[str, int], int], topics: Topics,
                 timeout: float, worker_key: bytes | None) -> None:
    deadline = time.monotonic() + timeout
    positions = {tp: -1 for tp in ends}
    while any(positions[tp] < end - 1 for tp, end in ends.items() if end > 0):
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"reading the control topics took longer than {timeout:.0f}s")
        for m in poll_batch(consumer, 10_000, 0.1):
            if not m.error():
                positions[(m.topic(), m.partition())] = m.offset()
                _take(m, out, topics, worker_key)


def _take(message: Any, out: Drained, topics: Topics, worker_key: bytes | None) -> None:
    if message.value() is None:
        return
    if message.topic() == topics.policies:
        out.policies.append((message.value(), message.timestamp()[1], signature_of(message.headers())))
        return
    if worker_key is not None and not verify(worker_key, message.value(), signature_of(message.headers())):
        out.unsigned += 1
        return
    try:
        record = decode_bandit_record(message.value())
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError):  # see wire._decode
        out.undecodable += 1
        return
    out.observations.extend(Observation(*o) for o in record.observations)


class ControlFeed:
    """Reads the policies topic from its start and the bandit topic from a given time, then follows both.

    Startup: :meth:`read_policies`, then :meth:`read_bandit` (how far back depends on the
    policy's forgetting), then :meth:`start` the thread that follows both topics.
    """

    def __init__(self, kafka: KafkaSettings, topics: Topics, worker_key: bytes | None = None,
                 clients: KafkaClients = CONFLUENT) -> None:
        self.topics, self.worker_key = topics, worker_key  # with a key, bandit records must be signed with it
        self._consumer: Consumer = clients.consumer(kafka.consumer(f"{topics.namespace}.control-reader", **{
            "enable.auto.commit": False, "fetch.wait.max.ms": max(kafka.fetch_wait_ms, BACKGROUND_FETCH_WAIT_MS)}))
        self._lock = threading.Lock()
        self._pending = Drained()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-feed", daemon=True)

    def _read(self, topic: str, since_ms: float | None, timeout: float) -> Drained:
        c = self._consumer
        span = since_offsets(c, topic, since_ms, timeout)
        ends = {(topic, p): end if start < end else 0 for p, (start, end) in span.items()}
        # incremental: keeps the positions of the topic already assigned (it is followed from there)
        c.incremental_assign([TopicPartition(topic, p, start) for p, (start, _) in span.items()])
        out = Drained()
        _read_to_end(c, out, ends, self.topics, timeout, self.worker_key)
        return out

    def read_policies(self, timeout: float = 30.0) -> Drained:
        """Blocking: every policy record there is now."""
        return self._read(self.topics.policies, None, timeout)

    def read_bandit(self, since_ms: float | None, timeout: float = 60.0) -> Drained:
        """Blocking: the observations written since ``since_ms`` (None: all)."""
        return self._read(self.topics.bandit, since_ms, timeout)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = poll_batch(self._consumer, 10_000, 0.05)
            if messages:
                with self._lock:
                    for m in messages:
                        if not m.error():
                            _take(m, self._pending, self.topics, self.worker_key)

    def drain(self) -> Drained:
        with self._lock:
            out, self._pending = self._pending, Drained()
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self._consumer.close()
