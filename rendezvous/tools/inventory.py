"""Which models are scoring right now: read from the scores topic, the one place every model writes.

Used to refuse a policy that names a model nobody runs (a typo such as
``forrest`` would otherwise be applied and silently never chosen).
"""

from __future__ import annotations

import time
from collections import defaultdict

from confluent_kafka import Consumer

from rendezvous.kernel.kafka import read_range, since_offsets
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.wire import WireError, decode_score_batch

__all__ = ["scoring_models"]


def scoring_models(kafka: KafkaSettings, topics: Topics, window_s: float = 300.0,
                   timeout: float = 30.0) -> dict[str, set[str]]:
    """``{model: {versions}}`` of every model that wrote a score in the last ``window_s`` seconds."""
    consumer = Consumer(kafka.consumer(f"{topics.namespace}.inventory-{time.time_ns()}",
                                       **{"enable.auto.commit": False}))
    found: dict[str, set[str]] = defaultdict(set)
    try:
        span = since_offsets(consumer, topics.scores, time.time() * 1000 - 1000 * window_s, timeout)
        for message in read_range(consumer, topics.scores, span, timeout):
            try:
                batch = decode_score_batch(message.value())
            except WireError:
                continue
            found[batch.model].add(batch.model_version)
    finally:
        consumer.close()
    return dict(found)
