"""Reading batches from confluent-kafka without waiting for them to fill.

``Consumer.consume(n, timeout)`` returns only when ``n`` messages have arrived or
``timeout`` has passed, so at low load every hop would wait out the timeout.
:func:`poll_batch` waits for the first message only, then takes whatever else is
already fetched: batches grow with load, and latency stays at one hop.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def poll_batch(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to ``max_messages`` messages; waits at most ``timeout`` seconds, and only for the first."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, timeout=0)] if max_messages > 1 else [first]
