"""What a worker's standby reads: every partition's requests, scores and results, and who its peers are.

One confluent-kafka consumer, outside the consumer group (assigned, never
committing), on a thread of its own; the worker's loop takes what it read with
:meth:`ShadowReader.drain` on each housekeeping round, as it does the control
feed. Requests, scores and results are read from their end when the worker
starts: a standby covers what happens from then on. The presence topic is read
from its start: that is where the other workers say where they listen.

``catch_up()`` asks for every result written so far: :attr:`caught_up` is the
number of the last request served, so a takeover writes nothing a dead owner had
already answered.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from rendezvous.kernel.kafka import CONFLUENT, KafkaClients, poll_batch
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics

__all__ = ["ShadowReader", "ShadowRecords"]

log = logging.getLogger("rendezvous.standby")


@dataclass
class ShadowRecords:
    requests: list[Any] = field(default_factory=list)
    scores: list[Any] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    presence: list[Any] = field(default_factory=list)


class ShadowReader:
    def __init__(self, kafka: KafkaSettings, topics: Topics, group: str, clients: KafkaClients = CONFLUENT) -> None:
        self.topics, self.partitions = topics, 0
        self._consumer = clients.consumer(kafka.consumer(f"{group}.standby", **{
            "enable.auto.commit": False, "fetch.wait.max.ms": kafka.fetch_wait_ms}))
        self._lock = threading.Lock()
        self._pending = ShadowRecords()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="standby-reader", daemon=True)
        self._asked = 0  # catch-up requests made ...
        self.caught_up = 0  # ... and served

    def start(self, timeout_s: float = 10.0) -> ShadowReader:
        """Blocking (the topics' metadata): run it in an executor."""
        t = self.topics
        self.partitions = len(self._consumer.list_topics(t.requests, timeout=timeout_s).topics[t.requests].partitions)
        # Each topic from its end now, taken in this order: a request read was written after the scores'
        # and results' ends were taken, so its scores and result are read too (the end of each topic
        # resolved as it is first fetched would leave gaps between them).
        live = [TopicPartition(topic, p, self._consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                                             timeout=timeout_s)[1])
                for topic in (t.results, t.scores, t.requests) for p in range(self.partitions)]
        self._consumer.assign([*live, TopicPartition(t.presence, 0, OFFSET_BEGINNING)])
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self._consumer.close()

    def catch_up(self) -> int:
        """Ask for every result written until now; returns the number :attr:`caught_up` reaches once read."""
        with self._lock:
            self._asked += 1
            return self._asked

    def drain(self) -> ShadowRecords:
        with self._lock:
            out, self._pending = self._pending, ShadowRecords()
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = self._asked
            targets = self._ends() if asked > self.caught_up else None
            self._take(poll_batch(self._consumer, 10_000, 0.02))
            if targets is not None:
                self._read_to(targets)
                with self._lock:  # what was read to reach the ends is drained with the rest
                    self.caught_up = asked

    def _ends(self) -> dict[int, int]:
        ends = {}
        for p in range(self.partitions):
            try:
                ends[p] = self._consumer.get_watermark_offsets(TopicPartition(self.topics.results, p), timeout=2)[1]
            except KafkaException as exc:
                log.warning("standby: results partition %d's end unknown (%s): taking over without it", p, exc)
        return ends

    def _read_to(self, ends: dict[int, int], polls: int = 200) -> None:
        """Poll until the results consumer's position reaches ``ends`` (bounded)."""
        results = self.topics.results
        for _ in range(polls):
            positions = self._consumer.position([TopicPartition(results, p) for p in ends])
            if all(tp.offset < 0 or tp.offset >= ends[tp.partition] for tp in positions):
                return
            self._take(poll_batch(self._consumer, 10_000, 0.01))

    def _take(self, messages: list[Any]) -> None:
        t = self.topics
        with self._lock:
            pending = self._pending
            for m in messages:
                if m.error():
                    continue
                topic = m.topic()
                (pending.requests if topic == t.requests else pending.scores if topic == t.scores
                 else pending.results if topic == t.results else pending.presence).append(m)
