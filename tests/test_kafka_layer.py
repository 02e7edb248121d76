"""The Kafka client layer against the real broker: reading a topic to its end."""

from __future__ import annotations

import pytest
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


def test_a_result_is_judged_written_when_the_broker_appended_it(kafka: KafkaSettings):
    """The results topic is created with LogAppendTime: a delivery report carries the broker's write time,
    which is what the SLA is judged by (never later than when the worker learned of it)."""
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

    from rendezvous.kernel.admin import ensure_topics
    from rendezvous.kernel.clock import now_ms
    from rendezvous.kernel.topics import Topics
    from rendezvous.service.writer import written_ms

    topics = Topics.with_prefix(f"stamped-{id(kafka)}")
    ensure_topics(kafka, topics, 1)
    producer, reports = Producer(kafka.producer()), []
    sent = now_ms()
    producer.produce(topics.results, b"{}", b"k", timestamp=int(sent) - 60_000,  # a producer clock a minute behind
                     on_delivery=lambda err, msg: reports.append((msg, now_ms())))
    assert producer.flush(10) == 0
    [(msg, served)] = reports
    if msg.timestamp()[0] != TIMESTAMP_LOG_APPEND_TIME:
        pytest.skip("this broker keeps the producer's timestamp (Tansu ignores message.timestamp.type)")
    assert int(sent) - 1 <= written_ms(msg, served) <= served  # the broker's time, not the producer's
