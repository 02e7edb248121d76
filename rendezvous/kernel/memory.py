"""An in-memory Kafka, behind the same client interface as confluent-kafka, for unit tests.

The worker's logic (what it acknowledges when, what it writes where, what a new
owner of a partition re-reads) is tested against this, fast and with an
injected clock; every guarantee keeps its live test against a real broker.
Only what rendezvous uses is implemented: a producer with delivery reports
served by ``poll``, a consumer that is assigned partitions, watermarks,
committed offsets and offsets for times, and Faust-style events whose ``ack``
commits the group's offset as Faust does (up to the first unacknowledged record).

>>> from rendezvous.kernel.clock import FixedClock
>>> broker = MemoryBroker(FixedClock(1000.0), partitions=2)
>>> producer = broker.producer({})
>>> delivered = []
>>> producer.produce("t", b"v", b"k", partition=1, on_delivery=lambda err, m: delivered.append((err, m.offset())))
>>> len(producer), delivered
(1, [])
>>> producer.poll(0), delivered
(1, [(None, 0)])
>>> [(m.key(), m.value(), m.timestamp()[1]) for m in broker.records("t", 1)]
[(b'k', b'v', 1000)]
>>> event = broker.event("t", 1, 0)
>>> event.message.value, broker.committed_offset("group", "t", 1)
(b'v', None)
>>> event.ack(); broker.committed_offset("group", "t", 1)
1
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from rendezvous.kernel.clock import Clock, now_ms
from rendezvous.kernel.kafka import KafkaClients

__all__ = ["MemoryBroker", "MemoryProducer", "MemoryConsumer", "MemoryMessage", "MemoryEvent"]

Headers = list[tuple[str, bytes]]
DeliveryReport = Callable[[KafkaError | None, "MemoryMessage"], None]


class MemoryMessage:
    """One record, with confluent-kafka's ``Message`` accessors."""

    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_headers", "_timestamp", "_error")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                 headers: Headers | None, timestamp_ms: int, error: KafkaError | None = None) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._headers = key, value, headers
        self._timestamp, self._error = timestamp_ms, error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Headers | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._timestamp

    def error(self) -> KafkaError | None:
        return self._error

    def __repr__(self) -> str:
        return f"MemoryMessage({self._topic}/{self._partition}@{self._offset}, key={self._key!r})"


@dataclass
class FaustMessage:
    """The attributes of a Faust ``Message`` the worker reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: float  # seconds, as Faust gives it


class MemoryEvent:
    """A record as a Faust agent receives it; ``ack`` marks it done for its group's commit."""

    def __init__(self, broker: MemoryBroker, group: str, message: FaustMessage) -> None:
        self.broker, self.group, self.message = broker, group, message
        self.acked = False

    def ack(self) -> None:
        if self.acked:
            raise AssertionError(f"{self.message.topic}/{self.message.partition}@{self.message.offset} acknowledged twice")
        self.acked = True
        self.broker._acked(self.group, self.message.topic, self.message.partition, self.message.offset)


@dataclass
class _Group:
    acked: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    metadata: dict[tuple[str, int], str] = field(default_factory=dict)  # what the last commit carried


class MemoryBroker(KafkaClients):
    """Topics (created on first use, ``partitions`` each), consumer groups' commits, and clients.

    ``refuse(topic, error_code)`` makes the next delivery to ``topic`` fail with that error;
    ``max_message_bytes`` makes a larger record refused when produced, as librdkafka does;
    ``make_again(topic)`` gives a topic a new, empty log and a new id, as a broker that lost its data does.
    """

    def __init__(self, clock: Clock = now_ms, partitions: int = 1, max_message_bytes: int = 1_000_000) -> None:
        self.clock, self.partitions, self.max_message_bytes = clock, partitions, max_message_bytes
        self._logs: dict[str, list[list[MemoryMessage]]] = {}
        self._ids: dict[str, str] = {}  # topic -> its id, new each time it is made
        self._groups: dict[str, _Group] = {}
        self._refusals: dict[str, list[int]] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ clients

    def producer(self, config: dict[str, Any]) -> MemoryProducer:
        return MemoryProducer(self)

    def consumer(self, config: dict[str, Any]) -> MemoryConsumer:
        return MemoryConsumer(self, config.get("group.id", ""), config.get("auto.offset.reset", "earliest"))

    # ------------------------------------------------------------------ topics

    def _log(self, topic: str) -> list[list[MemoryMessage]]:
        with self._lock:
            if topic not in self._logs:
                self._logs[topic] = [[] for _ in range(self.partitions)]
                self._ids.setdefault(topic, f"{topic}#1")
            return self._logs[topic]

    def make_again(self, topic: str) -> str:
        """``topic`` with a new, empty log and a new id, which it returns; consumer groups keep their commits
        (as one written after the topic was made again, from a consumer that still held the old offsets)."""
        with self._lock:
            generation = int(self._ids[topic].rsplit("#", 1)[1]) + 1 if topic in self._ids else 1
            self._logs[topic] = [[] for _ in range(self.partitions)]
            self._ids[topic] = f"{topic}#{generation}"
            return self._ids[topic]

    def topic_ids(self, kafka: Any, topics: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        with self._lock:
            return {topic: self._ids[topic] for topic in topics if topic in self._ids}

    def append(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1,
               headers: Headers | None = None, timestamp_ms: int = 0) -> MemoryMessage:
        """Write one record now (as another client would); -1: partition by key."""
        with self._lock:
            log = self._log(topic)
            if partition < 0:
                partition = (sum(key) if key else 0) % len(log)
            stamp = timestamp_ms or int(self.clock())
            message = MemoryMessage(topic, partition, len(log[partition]), key, value, headers, stamp)
            log[partition].append(message)
            return message

    def records(self, topic: str, partition: int | None = None) -> list[MemoryMessage]:
        """Every record of ``topic`` (of one partition, or all in partition order)."""
        with self._lock:
            log = self._log(topic)
            return list(log[partition]) if partition is not None else [m for part in log for m in part]

    def end_offset(self, topic: str, partition: int) -> int:
        with self._lock:
            return len(self._log(topic)[partition])

    def refuse(self, topic: str, code: int = KafkaError._MSG_TIMED_OUT) -> None:
        """The next record produced to ``topic`` fails its delivery with ``code``."""
        with self._lock:
            self._refusals.setdefault(topic, []).append(code)

    def _take_refusal(self, topic: str) -> int | None:
        with self._lock:
            codes = self._refusals.get(topic)
            return codes.pop(0) if codes else None

    # ------------------------------------------------------------------ groups

    def event(self, topic: str, partition: int, offset: int, group: str = "group") -> MemoryEvent:
        """The record at ``offset`` as a Faust agent of ``group`` receives it."""
        m = self.records(topic, partition)[offset]
        return MemoryEvent(self, group, FaustMessage(topic, partition, offset, m.key(), m.value(),
                                                     list(m.headers() or []), m.timestamp()[1] / 1000.0))

    def _acked(self, group: str, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            g = self._groups.setdefault(group, _Group())
            tp = (topic, partition)
            done = g.acked.setdefault(tp, set())
            done.add(offset)
            start = nxt = g.committed.get(tp, 0)
            while nxt in done:  # Faust commits up to the first record not acknowledged yet
                done.discard(nxt)
                nxt += 1
            if nxt > start:
                g.committed[tp] = nxt

    def commit(self, group: str, topic: str, partition: int, offset: int, metadata: str = "") -> None:
        with self._lock:
            g = self._groups.setdefault(group, _Group())
            g.committed[(topic, partition)], g.metadata[(topic, partition)] = offset, metadata

    def committed_offset(self, group: str, topic: str, partition: int) -> int | None:
        with self._lock:
            g = self._groups.get(group)
            return None if g is None else g.committed.get((topic, partition))

    def committed_metadata(self, group: str, topic: str, partition: int) -> str:
        with self._lock:
            g = self._groups.get(group)
            return "" if g is None else g.metadata.get((topic, partition), "")


class MemoryProducer:
    """confluent-kafka's ``Producer`` surface: records are written, and reported, on ``poll``/``flush``."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self._queue: list[tuple[str, bytes | None, bytes | None, int, DeliveryReport | None, Headers | None, int]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, partition: int = -1,
                on_delivery: DeliveryReport | None = None, headers: Headers | None = None, timestamp: int = 0) -> None:
        if value is not None and len(value) > self.broker.max_message_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE,
                                            f"Message size {len(value)} exceeds message.max.bytes"))
        self._queue.append((topic, value, key, partition, on_delivery, headers, timestamp))

    def poll(self, timeout: float = 0) -> int:
        queue, self._queue = self._queue, []
        for topic, value, key, partition, on_delivery, headers, timestamp in queue:
            code = self.broker._take_refusal(topic)
            if code is not None:
                failed = MemoryMessage(topic, max(partition, 0), -1, key, value, headers, timestamp,
                                       KafkaError(code, f"refused by the test broker ({code})"))
                if on_delivery is not None:
                    on_delivery(failed.error(), failed)
                continue
            message = self.broker.append(topic, value, key, partition, headers, timestamp)
            if on_delivery is not None:
                on_delivery(None, message)
        return len(queue)

    def flush(self, timeout: float = 0) -> int:
        self.poll(0)
        return 0

    def __len__(self) -> int:
        return len(self._queue)


@dataclass
class _TopicMeta:
    partitions: dict[int, Any]


@dataclass
class _Metadata:
    topics: dict[str, _TopicMeta]


class MemoryConsumer:
    """confluent-kafka's ``Consumer`` surface for assigned (not subscribed) reading."""

    def __init__(self, broker: MemoryBroker, group: str, offset_reset: str = "earliest") -> None:
        self.broker, self.group, self.offset_reset = broker, group, offset_reset
        self._positions: dict[tuple[str, int], int] = {}
        self.closed = False

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._positions = {}
        self.incremental_assign(partitions)

    def incremental_assign(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            offset = tp.offset
            if offset in (OFFSET_BEGINNING, OFFSET_INVALID) or offset < 0:
                offset = self.broker.end_offset(tp.topic, tp.partition) if offset == OFFSET_END else 0
            self._positions[(tp.topic, tp.partition)] = offset

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[MemoryMessage]:
        out: list[MemoryMessage] = []
        for (topic, partition), position in sorted(self._positions.items()):
            taken = self.broker.records(topic, partition)[position : position + num_messages - len(out)]
            self._positions[(topic, partition)] = position + len(taken)
            out.extend(taken)
            if len(out) >= num_messages:
                break
        return out

    def poll(self, timeout: float = -1) -> MemoryMessage | None:
        for (topic, partition), position in sorted(self._positions.items()):
            if self.offset_reset == "error" and position > self.broker.end_offset(topic, partition):
                # as librdkafka reports a position past the log's end with auto.offset.reset=error
                return MemoryMessage(topic, partition, position, None, None, None, 0,
                                     KafkaError(KafkaError._AUTO_OFFSET_RESET, "Offset out of range"))
        taken = self.consume(1)
        return taken[0] if taken else None

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = -1, cached: bool = False) -> tuple[int, int]:
        return 0, self.broker.end_offset(tp.topic, tp.partition)

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            offset = self.broker.committed_offset(self.group, tp.topic, tp.partition)
            metadata = self.broker.committed_metadata(self.group, tp.topic, tp.partition).split("\x00", 1)[0]  # as read
            out.append(TopicPartition(tp.topic, tp.partition, OFFSET_INVALID if offset is None else offset, metadata=metadata))
        return out

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            found = next((m.offset() for m in self.broker.records(tp.topic, tp.partition) if m.timestamp()[1] >= tp.offset), -1)
            out.append(TopicPartition(tp.topic, tp.partition, found))
        return out

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> _Metadata:
        names = [topic] if topic else list(self.broker._logs)
        return _Metadata({name: _TopicMeta({p: None for p in range(len(self.broker._log(name)))}) for name in names})

    def close(self) -> None:
        self.closed = True
