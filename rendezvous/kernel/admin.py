"""Creating and checking topics, and reading a consumer group's position."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from rendezvous.kernel.errors import TopicError
from rendezvous.kernel.kafka import check_connection, topic_id, while_electing
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import DEFAULT_RETENTION_MS, Topics, retention_config

__all__ = ["ensure_topics", "partition_count", "end_offsets", "create_topic", "delete_topic", "topic_id", "TopicError"]


def _partition_counts(admin: AdminClient, timeout: float, led: bool = False) -> dict[str, int]:
    """Partition count of every topic; ``led``: only topics whose every partition has a leader already
    (Kafka elects them just after creation; until then reads and writes are refused)."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"cannot reach the broker: {exc.args[0].str()}") from None
    return {name: len(t.partitions) for name, t in metadata.topics.items()
            if not t.error and not (led and any(p.leader < 0 or p.error for p in t.partitions.values()))}


def _await_leaders(admin: AdminClient, names: list[str], timeout: float) -> dict[str, int]:
    """Wait until every partition of ``names`` has a leader; the partition counts of every such topic."""
    deadline = time.monotonic() + timeout
    while True:
        counts = _partition_counts(admin, timeout, led=True)
        if all(name in counts for name in names):
            return counts
        if time.monotonic() > deadline:
            raise TopicError(f"topics without a leader {timeout:.0f}s after creation: {sorted(set(names) - set(counts))}")
        time.sleep(0.05)


def ensure_topics(kafka: KafkaSettings, topics: Topics, partitions: int, timeout: float = 15.0,
                  retention_ms: int = DEFAULT_RETENTION_MS) -> dict[str, int]:
    """Create the system's topics that are missing; check the co-partitioning of the rest.

    New topics get :meth:`Topics.config` (``retention_ms`` for the request path);
    existing ones are left as they are.

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
        NewTopic(name, count, 1, config=topics.config(name, retention_ms))
        for name, count in wanted.items() if name not in existing
    ]
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise TopicError(f"cannot create topic {name}: {exc.args[0].str()}") from None
    counts = _await_leaders(admin, list(wanted), timeout)
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
    # a group under the topic's own prefix: where the deployment's ACLs let its readers in
    consumer = Consumer(kafka.consumer(f"{topic}.end-offsets", **{"enable.auto.commit": False}))
    deadline = time.monotonic() + timeout
    try:
        return [_high_watermark(consumer, TopicPartition(topic, p), deadline) for p in range(partitions)]
    finally:
        consumer.close()


def _high_watermark(consumer: Consumer, partition: TopicPartition, deadline: float) -> int:
    """Retried while the partition's leader is still being elected (a topic just created, a broker restarting)."""
    return while_electing(lambda: int(consumer.get_watermark_offsets(partition, timeout=max(deadline - time.monotonic(),
                                                                                           0.1))[1]),
                          deadline - time.monotonic())


def create_topic(kafka: KafkaSettings, name: str, partitions: int, timeout: float = 15.0,
                 retention_ms: int = DEFAULT_RETENTION_MS) -> None:
    """Create one topic (a replay target, a gateway's replies); an existing one is left as it is."""
    admin = AdminClient(kafka.admin())  # keep a reference until the future resolves
    try:
        topic = NewTopic(name, partitions, 1, config=retention_config(retention_ms))
        admin.create_topics([topic], operation_timeout=timeout)[name].result()
    except KafkaException as exc:
        if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
            raise TopicError(f"cannot create topic {name}: {exc.args[0].str()}") from None
    _await_leaders(admin, [name], timeout)


def delete_topic(kafka: KafkaSettings, name: str, timeout: float = 10.0) -> str | None:
    """Delete one topic (e.g. a stopped gateway's replies); None once deleted, else why the broker would not."""
    admin = AdminClient(kafka.admin())
    try:
        admin.delete_topics([name], operation_timeout=timeout)[name].result(timeout)
        return None
    except KafkaException as exc:
        return f"{exc.args[0].name()}: {exc.args[0].str()}"
