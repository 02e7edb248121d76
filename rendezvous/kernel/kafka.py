"""The Kafka client layer every component uses: batched polls, produce with
back-pressure, reading a range of a topic, and a fail-fast connection check.

Security and tuning come from :class:`~rendezvous.kernel.settings.KafkaSettings`;
nothing here builds client configs by hand.

Why :func:`poll_batch`: ``Consumer.consume(n, timeout)`` returns only when ``n``
messages have arrived or ``timeout`` has passed, so at low load every hop would
wait out the timeout. :func:`poll_batch` waits for the first message only, then
takes whatever else is already fetched: batches grow with load, and latency
stays at one hop.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from rendezvous.kernel.errors import BrokerUnavailable, KafkaConfigError
from rendezvous.kernel.settings import KafkaSettings

__all__ = [
    "KafkaClients", "ConfluentClients", "CONFLUENT", "poll_batch", "produce", "since_offsets", "read_range",
    "check_connection", "DeliveryCallback", "ELECTING", "while_electing", "topic_id", "log_stamp", "stamped_log",
    "commit_stamp", "committed_in_another_log",
]

DeliveryCallback = Callable[[KafkaError | None, Message], None]
T = TypeVar("T")

#: What a partition answers while its leader is not serving yet: a topic just made, a broker restarting
#: (librdkafka does not mark these retriable here).
ELECTING = frozenset({"NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE", "UNKNOWN_TOPIC_OR_PART",
                      "NOT_LEADER_OR_FOLLOWER", "_UNKNOWN_PARTITION"})


def while_electing(call: Callable[[], T], timeout: float) -> T:
    """``call()``, tried again while a partition's leader is still being elected, for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as exc:
            if exc.args[0].name() not in ELECTING or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class KafkaClients:
    """Where a component gets its Kafka clients from: confluent-kafka (:data:`CONFLUENT`, the default), or
    an in-memory broker for unit tests (:class:`rendezvous.kernel.memory.MemoryBroker`)."""

    def producer(self, config: dict[str, Any]) -> Any:
        raise NotImplementedError

    def consumer(self, config: dict[str, Any]) -> Any:
        raise NotImplementedError

    def topic_ids(self, kafka: KafkaSettings, topics: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        """The broker's id of each of ``topics`` that has one: a topic made again, or made on a broker that lost
        its data, has a new one. Missing where the broker gives none or cannot be asked now."""
        raise NotImplementedError


class ConfluentClients(KafkaClients):
    """The real clients (the default everywhere)."""

    def producer(self, config: dict[str, Any]) -> Any:
        return Producer(config)

    def consumer(self, config: dict[str, Any]) -> Any:
        return Consumer(config)

    def topic_ids(self, kafka: KafkaSettings, topics: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        admin = AdminClient(kafka.admin())
        return {topic: found for topic in topics if (found := topic_id(admin, topic, timeout)) is not None}


CONFLUENT = ConfluentClients()


def poll_batch(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to ``max_messages`` messages; waits at most ``timeout`` seconds, and only for the first."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, timeout=0)] if max_messages > 1 else [first]


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1,
            on_delivery: DeliveryCallback | None = None, headers: list[tuple[str, bytes]] | None = None,
            timestamp: int = 0) -> None:
    """Queue one record; when the local queue is full, serve delivery reports until there is room.

    ``partition`` -1 leaves the choice to the partitioner (by key). Raises
    :class:`confluent_kafka.KafkaException` for a record the client refuses (e.g. too large).
    """
    kwargs: dict[str, Any] = {"partition": partition}
    if timestamp:
        kwargs["timestamp"] = timestamp
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    if headers:
        kwargs["headers"] = headers
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:  # back-pressure: the broker is slower than we produce
            producer.poll(0.01)


def since_offsets(consumer: Consumer, topic: str, since_ms: float | None, timeout: float,
                  partitions: Iterable[int] | None = None) -> dict[int, tuple[int, int]]:
    """``{partition: (first offset at or after since_ms, end offset)}`` for ``partitions`` (default: all).

    ``since_ms`` None: from the start of each partition.
    """
    if partitions is None:
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
    out = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        start = low
        if since_ms is not None:
            found = consumer.offsets_for_times([TopicPartition(topic, p, max(int(since_ms), 0))], timeout=timeout)[0]
            start = found.offset if found.offset >= 0 else high
        out[p] = (start, high)
    return out


def read_range(consumer: Consumer, topic: str, ranges: dict[int, tuple[int, int]],
               timeout: float) -> Iterator[Message]:
    """Yield the records of ``ranges`` (``{partition: (start, end)}``), in order per partition: at least
    up to ``end`` (exclusive), and with them whatever else the consumer already holds.

    ``end`` is what the broker reported as the partition's end, which can be too low: Tansu 0.6
    reports the base offset of the partition's last record batch plus one, so the rest of that
    batch lies beyond it (measured: 15 records in three batches of 5 report an end of 11). Those
    records arrive in the same fetch as the one at ``end - 1``, so once every partition has reached
    its reported end, the records the consumer holds are drained (without waiting) and yielded too.

    Assigns ``consumer`` to the ranges; raises :class:`BrokerUnavailable` if they are
    not read within ``timeout`` seconds.
    """
    todo = {p: end for p, (start, end) in ranges.items() if start < end}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in todo])
    deadline = time.monotonic() + timeout
    while todo:
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"reading {topic} partitions {sorted(todo)} took longer than {timeout:.0f}s")
        for message in poll_batch(consumer, 10_000, 0.2):
            p, offset = message.partition(), message.offset()
            if message.error() or p is None or offset is None or p not in ranges:
                continue
            if offset >= todo.get(p, 0) - 1:
                todo.pop(p, None)
            yield message
    for _ in range(10):  # bounded: on a busy topic the consumer keeps fetching newer records
        held = [m for m in consumer.consume(10_000, timeout=0) if not m.error() and m.partition() in ranges]
        if not held:
            break
        yield from held


# librdkafka reports TLS and SASL failures through the error callback, not as exceptions;
# each is mapped to the setting that most likely causes it.
_FAILURE_HINTS = (
    ("certificate verify failed", "ssl.ca.location",
     "the broker's certificate is not signed by the CA in ssl.ca.location (or the host name does not match; "
     "see ssl.endpoint.identification.algorithm)"),
    ("alert", "ssl.certificate.location",
     "the broker refused the TLS handshake: it may require a client certificate (ssl.certificate.location, "
     "ssl.key.location)"),
    ("SASL authentication", "sasl.password", "the broker refused the SASL credentials (sasl.username, sasl.password)"),
    ("Authentication failed", "sasl.password", "the broker refused the SASL credentials (sasl.username, sasl.password)"),
    ("SSL handshake failed", "security.protocol",
     "the TLS handshake failed: is the broker's listener TLS (security.protocol SSL / SASL_SSL)?"),
)


def check_connection(kafka: KafkaSettings, timeout: float = 15.0) -> None:
    """Fail fast: reach the broker with these settings, or raise naming the setting at fault.

    Raises :class:`KafkaConfigError` for a TLS or SASL failure, and
    :class:`BrokerUnavailable` when the broker cannot be reached at all.
    """
    errors: list[str] = []
    config = kafka.admin()
    config["error_cb"] = lambda err: errors.append(err.str())
    config["log_level"] = 0  # the failure is reported once, by the exception below, not per retry on stderr
    try:
        admin = AdminClient(config)
    except KafkaException as exc:
        raise kafka.client.explain_refusal(exc) from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=min(2.0, max(deadline - time.monotonic(), 0.1)))
            return
        except KafkaException:
            pass
        admin.poll(0)  # serves error_cb, where librdkafka reports TLS and SASL failures
        for text in errors:
            for needle, setting, problem in _FAILURE_HINTS:
                if needle.lower() in text.lower():
                    raise KafkaConfigError(setting, f"{problem} ({text})")
        if time.monotonic() > deadline:
            seen = f": {errors[-1]}" if errors else ""
            raise BrokerUnavailable(f"cannot reach the broker at {kafka.bootstrap} within {timeout:.0f}s{seen}",
                                    hint="check --broker (RENDEZVOUS_BROKER) and the Kafka client settings")


def topic_id(admin: AdminClient, topic: str, timeout: float = 10.0) -> str | None:
    """The topic's id, which a topic made again (or a broker that lost its data) changes; None where the broker
    gives none (Tansu gives the null id) or cannot be asked now."""
    try:
        description = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout)
    except Exception:  # noqa: BLE001 - no ids on this broker, or not reachable now
        return None
    found = str(description.topic_id) if description.topic_id is not None else ""
    return None if not found or set(found) <= {"0", "-", "A"} else found  # none, or the null id


# A consumer's commits can say which log their offsets were read from: the topic's id, in the commit's metadata
# (where Kafka keeps it with the offset). A later owner that finds another id there knows the topic was made again
# (or the broker lost its data), even where the new log has already grown past the committed offset.
_STAMP = re.compile(r"log=([^;\x00]+);")


def log_stamp(topic_id: str) -> str:
    """The metadata of a commit of offsets read from the topic with ``topic_id``.

    >>> log_stamp("q3Yb")
    'log=q3Yb;'
    >>> stamped_log(log_stamp("q3Yb")), stamped_log('log=q3Yb;J"V'), stamped_log(""), stamped_log(None)
    ('q3Yb', 'q3Yb', None, None)
    """
    return f"log={topic_id};"


def stamped_log(metadata: str | None) -> str | None:
    """The topic id a commit's metadata names, if it names one (commits by other clients carry none). What
    follows the ``;`` is ignored (see :func:`commit_stamp`)."""
    found = _STAMP.match(metadata or "")
    return found.group(1) if found else None


def commit_stamp(committed: TopicPartition) -> str | None:
    """The topic id a committed offset (from ``Consumer.committed``) was stamped with, if any.

    confluent-kafka 2.16 reads a commit's metadata up to a NUL (it writes one after its own); metadata written
    without one is read with whatever follows it in memory (measured: 170 of 800 reads of a stamp), which may
    not even decode.
    """
    try:
        return stamped_log(committed.metadata)
    except UnicodeDecodeError:
        return None


def committed_in_another_log(committed: TopicPartition, topic_id: str | None) -> bool:
    """Whether a committed offset was read from another log than the topic's now (``topic_id``): it names
    another id. Unknown (no id, or an unstamped commit) is not another.

    >>> committed_in_another_log(TopicPartition("requests", 0, 12, metadata=log_stamp("old")), "new")
    True
    >>> committed_in_another_log(TopicPartition("requests", 0, 12, metadata=log_stamp("new")), "new")
    False
    >>> committed_in_another_log(TopicPartition("requests", 0, 12), "new")
    False
    """
    stamp = commit_stamp(committed)
    return topic_id is not None and stamp is not None and stamp != topic_id
