"""The decoy: looks like a model to the system, but only archives what it reads.

It reads the requests topic in its own consumer group, exactly as a model does,
and appends every record, byte for byte, to an :class:`~decoy.archive.ArchiveWriter`:
the data as the models saw it. Offsets are committed only after the archive is
synced, and records the archive already holds are skipped, so a crash neither
loses a record nor archives one twice. A partition whose log is new (the broker lost
its data, or the topic was made again: offsets start again) is told from a
re-delivery by its end offset and the topic's id, and archived as a new log.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry, Counter

from decoy.archive import ArchivedRecord, ArchiveWriter
from rendezvous.kernel.admin import topic_id
from rendezvous.kernel.client_config import describe
from rendezvous.kernel.kafka import poll_batch
from rendezvous.kernel.link import BrokerLink
from rendezvous.kernel.settings import BACKGROUND_FETCH_WAIT_MS, KafkaSettings
from rendezvous.kernel.topics import Topics

__all__ = ["Decoy"]

log = logging.getLogger("rendezvous.decoy")

class Decoy:
    def __init__(self, kafka: KafkaSettings, topics: Topics, archive: ArchiveWriter, *,
                 group: str | None = None, max_batch: int = 2000, registry: CollectorRegistry | None = None) -> None:
        self.topics, self.archive, self.max_batch = topics, archive, max_batch
        self._kafka = {"bootstrap": kafka.bootstrap, **describe(kafka.client)}  # redacted: shown by /info
        self.registry = registry or CollectorRegistry()
        self.records = Counter("rendezvous_decoy_records", "Records archived by the decoy", registry=self.registry)
        self.bytes = Counter("rendezvous_decoy_bytes", "Key and value bytes archived by the decoy", registry=self.registry)
        self.skipped = Counter("rendezvous_decoy_redelivered_records",
                               "Records skipped because the archive already held them", registry=self.registry)
        self._consumer = Consumer(kafka.consumer(group or topics.group("decoy"), **{
            "enable.auto.commit": False, "fetch.wait.max.ms": max(kafka.fetch_wait_ms, BACKGROUND_FETCH_WAIT_MS)}))
        self._assigned: set[int] | None = None
        self.link = BrokerLink(kafka)
        self._admin = AdminClient(kafka.admin())
        self._checked_redelivery: set[int] = set()  # partitions whose run of re-deliveries was checked
        self.new_logs = Counter("rendezvous_decoy_new_logs", "Partitions found to be a new log (the broker lost "
                                "the old one, or the topic was made again)", registry=self.registry)

    @property
    def ready(self) -> bool:
        return self._assigned is not None and self.link.reachable

    def info(self) -> dict[str, Any]:
        return {"role": "decoy", "archive": str(self.archive.directory), "next_seq": self.archive.next_seq,
                "partitions": sorted(self._assigned or ()), "kafka": self._kafka,
                "broker_problem": self.link.problem()}

    def run(self, stop: threading.Event) -> None:
        self._consumer.subscribe([self.topics.requests], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.link.start()
        try:
            while not stop.is_set():
                messages = poll_batch(self._consumer, self.max_batch, timeout=0.1)
                if messages:
                    self._archive(messages)
        finally:
            self.link.stop()
            self.archive.close()
            self._consumer.close()

    def _archive(self, messages: list[Any]) -> None:
        last: dict[int, int] = {}
        before_records, before_bytes = self.archive.records_written, self.archive.bytes_written
        for m in messages:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", m.error())
                continue
            last[m.partition()] = m.offset()
            if self.archive.already_archived(m.topic(), m.partition(), m.offset()) and self._redelivered(m):
                self.skipped.inc()
                self.archive.note_skipped(m.topic(), m.partition())
                continue
            self._checked_redelivery.discard(m.partition())
            self.archive.append(ArchivedRecord(
                m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(),
                list(m.headers()) if m.headers() else None, self.archive.log_of(m.topic(), m.partition()),
            ))
        self.archive.sync()  # durable first...
        self.records.inc(self.archive.records_written - before_records)
        self.bytes.inc(self.archive.bytes_written - before_bytes)
        if last:  # ...then committed
            self._commit([TopicPartition(self.topics.requests, p, o + 1) for p, o in last.items()])

    def _commit(self, offsets: list[TopicPartition]) -> None:
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed (records will be re-delivered and skipped): %s", exc)

    def _redelivered(self, m: Any) -> bool:
        """Whether a record at an offset already archived is a re-delivery, or the first of a new log.

        Asked once per run of such records in a partition: a log's end never moves back, so
        if the partition now ends at or before the last offset archived, the broker's log is
        a new one (it lost its data), and its records are archived, not skipped."""
        partition = m.partition()
        if partition in self._checked_redelivery:
            return True
        self._checked_redelivery.add(partition)
        try:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(m.topic(), partition), timeout=5)
        except KafkaException:
            return True  # cannot tell: skipping is what the offsets say
        last = self.archive.last_offset(m.topic(), partition)
        if 0 <= high <= last:
            self._start_new_log(m.topic(), partition, f"it ends at offset {high} but {last} was archived")
            return False
        return True

    def _start_new_log(self, topic: str, partition: int, why: str) -> None:
        log.warning("%s[%d] is a new log (%s): the broker lost the old one or the topic was made again; "
                    "archiving it as log %d", topic, partition, why, self.archive.new_log(topic, partition))
        self.new_logs.inc()

    def _check_topic_id(self) -> None:
        """A topic made again has a new id (on brokers with ids): every partition then has a new log."""
        topic = self.topics.requests
        found = topic_id(self._admin, topic)
        if found is None:  # no ids on this broker, or not reachable now: offsets still guard
            return
        known = self.archive.topic_ids.get(topic)
        if known is not None and known != found:
            for partition in sorted({key[1] for key in self.archive.last_offsets if key[0] == topic}):
                self._start_new_log(topic, partition, f"its topic id is now {found}, was {known}")
        self.archive.topic_ids[topic] = found

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._check_topic_id()
        self._checked_redelivery.clear()
        self._assigned = (self._assigned or set()) | {tp.partition for tp in partitions}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = (self._assigned or set()) - {tp.partition for tp in partitions}
