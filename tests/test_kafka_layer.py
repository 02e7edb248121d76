"""The Kafka client layer against the real broker: reading a topic to its end."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer

from rendezvous.kernel.admin import create_topic
from rendezvous.kernel.kafka import read_range, since_offsets
from rendezvous.kernel.settings import KafkaSettings


def test_reading_to_the_end_gets_every_record_of_the_last_batch(kafka: KafkaSettings):
    """Tansu reports a partition's end as its last batch's base offset + 1; nothing past it may be missed."""
    topic = f"batches-{id(kafka)}"
    create_topic(kafka, topic, 2)
    producer = Producer(kafka.producer(**{"linger.ms": 50}))  # several records to a batch
    for batch in range(3):
        for i in range(5):
            producer.produce(topic, b"%d-%d" % (batch, i), partition=batch % 2)
        assert producer.flush(10) == 0
    consumer = Consumer(kafka.consumer("reader", **{"enable.auto.commit": False}))
    try:
        values = sorted(m.value() for m in read_range(consumer, topic, since_offsets(consumer, topic, None, 10), 10))
    finally:
        consumer.close()
    assert values == sorted(b"%d-%d" % (b, i) for b in range(3) for i in range(5))
