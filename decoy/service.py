"""The decoy: looks like a model to the system, but only archives what it reads.

It reads the requests topic in its own consumer group, exactly as a model does,
and appends every record, byte for byte, to an :class:`~decoy.archive.ArchiveWriter`:
the data as the models saw it. Offsets are committed only after the archive is
synced, and records the archive already holds are skipped, so a crash neither
loses a record nor archives one twice.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from decoy.archive import ArchivedRecord, ArchiveWriter
from rendezvous.kernel.client_config import describe
from rendezvous.kernel.kafka import poll_batch
from rendezvous.kernel.link import BrokerLink
from rendezvous.kernel.settings import BACKGROUND_FETCH_WAIT_MS, KafkaSettings
from rendezvous.kernel.topics import Topics

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
            if self.archive.already_archived(m.topic(), m.partition(), m.offset()):
                self.skipped.inc()
                continue
            self.archive.append(ArchivedRecord(
                m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(),
                list(m.headers()) if m.headers() else None,
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

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = (self._assigned or set()) | {tp.partition for tp in partitions}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = (self._assigned or set()) - {tp.partition for tp in partitions}
