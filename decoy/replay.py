"""Send a range of the decoy's archive back onto a topic.

Records keep their key, value and headers byte for byte. By default they get a
fresh timestamp, so that replayed requests are scored and answered as new ones;
``keep_timestamps`` preserves the originals (e.g. to rebuild a topic).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import Producer

from decoy.archive import ArchiveReader
from rendezvous.kernel.errors import BrokerUnavailable
from rendezvous.kernel.kafka import produce
from rendezvous.kernel.settings import KafkaSettings

__all__ = ["replay"]


def replay(
    reader: ArchiveReader,
    kafka: KafkaSettings,
    topic: str,
    *,
    from_seq: int = 0,
    to_seq: int | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    rate: float = 0.0,
    keep_timestamps: bool = False,
    keep_partitions: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Produce the chosen records to ``topic``; returns how many were sent."""
    wanted = set(reader.seqs_between(since_ms, until_ms)) if since_ms is not None or until_ms is not None else None
    producer = Producer(kafka.producer())
    interval = 1.0 / rate if rate > 0 else 0.0
    start, sent = time.perf_counter(), 0
    for seq, record in reader.read(from_seq, to_seq):
        if wanted is not None and seq not in wanted:
            continue
        if interval and (delay := start + sent * interval - time.perf_counter()) > 0:
            time.sleep(delay)
        produce(producer, topic, record.value, record.key, record.partition if keep_partitions else -1,
                headers=record.headers or None, timestamp=record.timestamp if keep_timestamps else 0)
        producer.poll(0)
        sent += 1
        if on_progress is not None and sent % 1000 == 0:
            on_progress(sent)
    if producer.flush(60):
        raise BrokerUnavailable("some replayed records were not delivered within 60 s")
    if on_progress is not None:
        on_progress(sent)
    return sent
