"""What a worker must know before it takes over a requests partition.

A request is acknowledged only once its result is durable, so a new owner of
partition *p* re-reads from the committed offset every request whose answer was
not yet confirmed. Some of those were answered before the previous owner died:
their results are in the results topic. We read the results written since the
oldest re-read request (minus a margin for clock skew) and treat those ids as
answered, so no request is answered twice.

We also note how far the scores partition reaches, so that re-read requests are
decided only once their re-read scores are in (see ``Router.hold``), and we
re-index the results of the last ``rebuild_s`` seconds, so that outcomes for
requests the previous owner answered can still credit their models.

A committed offset past the end of its partition means the log is not the one it
was committed in: the broker lost its data, or the topic was made again. Such a
partition is read again from its start (``rewind``), as Kafka's
``auto.offset.reset=earliest`` would, instead of waiting for offsets that the new
log will reach only much later. The end a broker reports can be too low (Tansu 0.6
reports its last record batch's first offset + 1: 15 records in one batch, an end
of 1), so the last committed record is looked for first: if it is there, the log
is the old one.

Offsets alone miss a new log that has already grown past the committed offset (a
worker that still held the old log's offsets committed them after the broker came
back, and traffic went on): the records below that offset would be skipped. So
every commit the worker makes carries the id of the topic it read
(:func:`~rendezvous.kernel.kafka.log_stamp`, in the commit's metadata, where Kafka
keeps it with the offset), and a commit
stamped with another id than the topic's own is a new log's too. A broker that
gives no topic ids (Tansu) leaves only the offsets check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_INVALID, Consumer, Message, TopicPartition

from rendezvous.kernel.clock import Clock, now_ms
from rendezvous.kernel.kafka import (
    CONFLUENT,
    KafkaClients,
    committed_in_another_log,
    read_range,
    since_offsets,
    while_electing,
)
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.wire import Result, WireError, decode_result

__all__ = ["PartitionRecovery", "recover_partitions"]


@dataclass
class PartitionRecovery:
    partition: int
    replay_from: int  # first request offset that will be re-read
    replay_to: int  # requests high watermark at takeover
    answered: set[str] = field(default_factory=set)  # ids already answered among the re-read requests
    results: list[Result] = field(default_factory=list)  # recent results, to re-index for outcomes
    scores_target: int = 0  # scores high watermark at takeover: held until consumed up to here
    scores_from: int = 0
    rewind: dict[str, int] = field(default_factory=dict)  # topic -> offset to read again from (a new log)
    log_ids: dict[str, str] = field(default_factory=dict)  # topic -> its id at takeover, for the commits to carry

    @property
    def needs_catch_up(self) -> bool:
        return self.scores_target > self.scores_from


def _start(consumer: Consumer, probe: Callable[[], Consumer], topic: str, partition: int, log_id: str | None,
           rewind: dict[str, int], timeout: float) -> tuple[int, int]:
    """Where the group reads ``partition`` of ``topic`` from, and its end. A commit made in another log than the
    topic's own (``log_id``) is a new log's, and so is a committed offset past the end, unless its last committed
    record is there: the partition is then read from its start, noted in ``rewind``."""
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
    [found] = consumer.committed([TopicPartition(topic, partition)], timeout=timeout)
    committed = None if found.offset == OFFSET_INVALID or found.offset < 0 else found.offset
    if committed is not None and (committed_in_another_log(found, log_id)
                                  or (committed > high and not _holds(probe(), topic, partition, committed - 1))):
        rewind[topic] = low
        committed = None
    return (low if committed is None else max(committed, low)), high


def _holds(consumer: Consumer, topic: str, partition: int, offset: int, bound_s: float = 2.0) -> bool:
    """Whether the partition holds a record at ``offset`` (``consumer`` resets no offset: past the end, Kafka
    says so at once; a broker that says nothing for ``bound_s`` holds none there either)."""
    message = _first_at(consumer, topic, partition, offset, bound_s, errors_too=True)
    return message is not None and message.error() is None and message.offset() == offset


def _first_at(consumer: Consumer, topic: str, partition: int, offset: int, bound_s: float,
              errors_too: bool = False) -> Message | None:
    """The first record read from ``offset`` within ``bound_s`` (or the first error, with ``errors_too``)."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        message = consumer.poll(0.1)
        if message is not None and (errors_too or not message.error()):
            return message
    return None


def recover_partitions(
    kafka: KafkaSettings, topics: Topics, group: str, partitions: set[int],
    lookback_ms: int = 60_000, rebuild_s: float = 0.0, timeout: float = 30.0,
    clients: KafkaClients = CONFLUENT, clock: Clock = now_ms,
) -> dict[int, PartitionRecovery]:
    """Blocking: run it in an executor. Reads offsets and results for ``partitions``; a partition whose leader
    is still being elected (a broker just back) is asked again, within ``timeout``."""
    rebuild_since = clock() - 1000 * rebuild_s if rebuild_s > 0 else None
    log_ids = clients.topic_ids(kafka, [topics.requests, topics.scores], timeout=min(timeout, 5.0))
    consumer: Consumer = clients.consumer(kafka.consumer(group, **{"enable.auto.commit": False, "fetch.wait.max.ms": 10}))
    probes: list[Consumer] = []

    def probe() -> Consumer:  # made only for a committed offset past a partition's end
        if not probes:
            probes.append(clients.consumer(kafka.consumer(group, **{
                "enable.auto.commit": False, "fetch.wait.max.ms": 10, "auto.offset.reset": "error"})))
        return probes[0]

    try:
        return {p: while_electing(lambda p=p: _recover(consumer, probe, topics, p, log_ids, lookback_ms, rebuild_since,
                                                       timeout), timeout)
                for p in sorted(partitions)}
    finally:
        for c in (consumer, *probes):
            c.close()


def _recover(consumer: Consumer, probe: Callable[[], Consumer], topics: Topics, p: int, log_ids: dict[str, str],
             lookback_ms: int, rebuild_since: float | None, timeout: float) -> PartitionRecovery:
    rewind: dict[str, int] = {}
    start, high = _start(consumer, probe, topics.requests, p, log_ids.get(topics.requests), rewind, timeout)
    scores_from, scores_target = _start(consumer, probe, topics.scores, p, log_ids.get(topics.scores), rewind, timeout)
    rec = PartitionRecovery(p, start, high, scores_target=scores_target, scores_from=scores_from, rewind=rewind,
                            log_ids=log_ids)
    since = rebuild_since
    if start < high:
        first_ms = _timestamp_at(consumer, topics.requests, p, start, timeout)
        if first_ms is not None:
            since = first_ms - lookback_ms if since is None else min(since, first_ms - lookback_ms)
    if since is not None:
        rec.answered, rec.results = _results_since(consumer, topics.results, p, since, rebuild_since, timeout)
    return rec


def _timestamp_at(consumer: Consumer, topic: str, partition: int, offset: int, timeout: float) -> int | None:
    message = _first_at(consumer, topic, partition, offset, timeout)
    return message.timestamp()[1] if message is not None else None


def _results_since(consumer: Consumer, topic: str, partition: int, since_ms: float, decode_since: float | None,
                   timeout: float) -> tuple[set[str], list[Result]]:
    """Keys of the results in ``partition`` written at or after ``since_ms``, and the
    results themselves from ``decode_since`` on."""
    ids: set[str] = set()
    results: list[Result] = []
    span = since_offsets(consumer, topic, since_ms, timeout, [partition])
    for message in read_range(consumer, topic, span, timeout):
        if message.key() is not None:
            ids.add(message.key().decode(errors="replace"))
        if decode_since is not None and message.timestamp()[1] >= decode_since:
            try:
                results.append(decode_result(message.value()))
            except WireError:
                pass  # not ours to judge here; the results topic holds only what we wrote
    return ids, results
