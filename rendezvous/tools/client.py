"""A client of the system: send requests at a steady rate, collect their results.

Used by ``rendezvous demo``, the tests and the benchmarks; also an example of
talking to rendezvous with nothing but a Kafka client and the wire contract.

The collector starts reading the results topic at its end *before* the first
request is sent, on a thread of its own, so that a result is timed when it
arrives, not when the sender gets round to looking.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from rendezvous.kernel.admin import end_offsets
from rendezvous.kernel.clock import now_ms
from rendezvous.kernel.kafka import poll_batch, produce
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.wire import Outcome, Result, WireError, decode_result, encode

__all__ = ["Received", "ResultCollector", "RequestSender"]


@dataclass
class Received:
    result: Result
    at_ms: float
    partition: int  # the request's partition: outcomes for it go there too


class ResultCollector:
    """Reads the results topic from its current end, on a background thread."""

    def __init__(self, kafka: KafkaSettings, topics: Topics, partitions: int) -> None:
        self._consumer = Consumer(kafka.consumer(topics.reader_group("client"), **{"enable.auto.commit": False}))
        self._kafka, self._topic = kafka, topics.results
        ends = end_offsets(kafka, topics.results, partitions)
        self._consumer.assign([TopicPartition(topics.results, p, end) for p, end in enumerate(ends)])
        self._next_offset = dict(enumerate(ends))  # per partition: the offset the thread reads next
        self._fetched_end: dict[int, int] = {}
        self.results: dict[str, list[Received]] = {}
        self.undecodable = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="result-collector", daemon=True)

    def start(self) -> ResultCollector:
        self._thread.start()
        return self

    def _run(self) -> None:
        partitions = [TopicPartition(self._topic, p) for p in self._next_offset]
        while not self._stop.is_set():
            fetched = {tp.partition: self._consumer.get_watermark_offsets(tp, cached=True)[1] for tp in partitions}
            with self._lock:
                self._fetched_end = fetched  # the partition ends the consumer's latest fetches saw
            for message in poll_batch(self._consumer, 1000, timeout=0.05):
                if message.error():
                    continue
                at = now_ms()
                try:
                    result = decode_result(message.value())
                except WireError:
                    self.undecodable += 1
                    with self._lock:
                        self._next_offset[message.partition()] = message.offset() + 1
                    continue
                with self._lock:
                    self.results.setdefault(result.request_id, []).append(Received(result, at, message.partition()))
                    self._next_offset[message.partition()] = message.offset() + 1

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def snapshot(self) -> dict[str, list[Received]]:
        """A copy of the results so far, safe to iterate while the thread reads on."""
        with self._lock:
            return {rid: list(received) for rid, received in self.results.items()}

    def wait_for(self, request_ids: Iterable[str], timeout: float) -> bool:
        """Wait until every id has a result (True) or ``timeout`` seconds pass (False)."""
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if wanted.issubset(self.results):
                    return True
            time.sleep(0.02)
        return False

    def caught_up(self, timeout: float) -> bool:
        """Wait until every result written by now has been read (True), or ``timeout`` seconds pass (False).

        After it, a second result for a request, if any had been written, is in :attr:`results`.
        """
        deadline = time.monotonic() + timeout
        ends = dict(enumerate(end_offsets(self._kafka, self._topic, len(self._next_offset), timeout)))
        while time.monotonic() < deadline:
            # The broker's reported end can be too low (Tansu: the last batch's base offset + 1; see
            # kernel.kafka.read_range); the end our own latest fetch saw is the true one.
            with self._lock:
                read = dict(self._next_offset)
                fetched = dict(self._fetched_end)
            if all(read[p] >= max(end, fetched.get(p, end)) for p, end in ends.items()):
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


@dataclass
class RequestSender:
    """Produces requests at ``rate`` per second (0: as fast as possible), timing each send."""

    kafka: KafkaSettings
    topics: Topics
    sent_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._producer = Producer(self.kafka.producer())

    def send(
        self,
        requests: Iterable[tuple[str, dict[str, Any]]],
        rate: float,
        on_progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Send ``(request_id, features)`` pairs; returns how many were sent."""
        interval = 1.0 / rate if rate > 0 else 0.0
        start = time.perf_counter()
        n = 0
        for request_id, features in requests:
            if stop is not None and stop.is_set():
                break
            if interval:
                delay = start + n * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            payload = encode({"request_id": request_id, "features": features, "event_time": int(now_ms())})
            self.sent_ms[request_id] = now_ms()
            self._produce(request_id.encode(), payload)
            n += 1
            if on_progress is not None and n % 50 == 0:
                on_progress(n)
        self._producer.flush(30)
        if on_progress is not None:
            on_progress(n)
        return n

    def send_outcome(self, request_id: str, outcome: float | bool, partition: int) -> None:
        """The truth about a request, to its partition of the outcomes topic."""
        record = Outcome(request_id, outcome, now_ms())
        produce(self._producer, self.topics.outcomes, encode(record), request_id.encode(), partition)
        self._producer.poll(0)

    def flush(self) -> None:
        self._producer.flush(30)

    def send_raw(self, key: bytes | None, value: bytes | None) -> None:
        self._produce(key, value)
        self._producer.flush(30)

    def _produce(self, key: bytes | None, value: bytes | None) -> None:
        produce(self._producer, self.topics.requests, value, key)
        self._producer.poll(0)
