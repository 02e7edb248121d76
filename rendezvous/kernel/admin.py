"""Creating and checking topics, and reading a consumer group's position."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from rendezvous.kernel.errors import TopicError
from rendezvous.kernel.kafka import check_connection
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics

__all__ = ["ensure_topics", "partition_count", "end_offsets", "create_topic", "delete_topic", "TopicError"]


def _partition_counts(admin: AdminClient, timeout: float) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"cannot reach the broker: {exc.args[0].str()}") from None
    return {name: len(t.partitions) for name, t in metadata.topics.items() if not t.error}


def ensure_topics(kafka: KafkaSettings, topics: Topics, partitions: int, timeout: float = 15.0) -> dict[str, int]:
    """Create the system's topics that are missing; check the co-partitioning of the rest.

    Returns the partition count of every topic. Raises :class:`TopicError` if a
    co-partitioned topic already exists with a different partition count.
    """
    check_connection(kafka, timeout)  # a TLS or SASL mistake is reported naming the setting, once
    admin = AdminClient(kafka.admin())
    existing = _partition_counts(admin, timeout)
    wanted = {name: partitions for name in topics.copartitioned}
    wanted[topics.deadletter] = partitions
    wanted.update({name: 1 for name in topics.single_partition})
    missing = [
        NewTopic(name, count, 1, config={"cleanup.policy": "compact"} if name == topics.policies else {})
        for name, count in wanted.items() if name not in existing
    ]
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise TopicError(f"cannot create topic {name}: {exc.args[0].str()}") from None
    deadline = time.monotonic() + timeout
    while True:
        counts = _partition_counts(admin, timeout)
        if all(name in counts for name in wanted):
            break
        if time.monotonic() > deadline:
            raise TopicError(f"topics not visible after creation: {sorted(set(wanted) - set(counts))}")
        time.sleep(0.05)
    copart = {name: counts[name] for name in topics.copartitioned}
    if len(set(copart.values())) != 1:
        raise TopicError(
            "requests, scores, results and outcomes must have the same partition count so that "
            f"a request and its scores meet on one worker; found {copart}. Recreate them, or use "
            "another --topic-prefix"
        )
    return {name: counts[name] for name in wanted}


def partition_count(kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> int:
    counts = _partition_counts(AdminClient(kafka.admin()), timeout)
    if topic not in counts:
        raise TopicError(f"topic {topic} does not exist; create the system's topics with `rendezvous topics create`")
    return counts[topic]


def end_offsets(kafka: KafkaSettings, topic: str, partitions: int, timeout: float = 10.0) -> list[int]:
    """The high watermark of each partition of ``topic``: a lower bound on Tansu 0.6, which reports the last
    record batch's base offset + 1 (see ``kernel.kafka.read_range``)."""
    consumer = Consumer(kafka.consumer("rendezvous-admin-probe", **{"enable.auto.commit": False}))
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1] for p in range(partitions)]
    finally:
        consumer.close()


def create_topic(kafka: KafkaSettings, name: str, partitions: int, timeout: float = 15.0) -> None:
    """Create one topic (e.g. a replay target); an existing one is left as it is."""
    admin = AdminClient(kafka.admin())  # keep a reference until the future resolves
    try:
        admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=timeout)[name].result()
    except KafkaException as exc:
        if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
            raise TopicError(f"cannot create topic {name}: {exc.args[0].str()}") from None


def delete_topic(kafka: KafkaSettings, name: str, timeout: float = 10.0) -> bool:
    """Delete one topic (e.g. a stopped gateway's replies); False if the broker would not."""
    admin = AdminClient(kafka.admin())
    try:
        admin.delete_topics([name], operation_timeout=timeout)[name].result(timeout)
        return True
    except KafkaException:
        return False
