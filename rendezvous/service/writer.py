"""Writing results and dead letters, and acknowledging input records once they are durable.

An input record is acknowledged to Faust (and so becomes committable) only when
everything it led to is in Kafka: a request when its result is delivered, a
score record when every request it scored has been answered. After a crash the
worker re-reads exactly the records whose work was not yet durable.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, KafkaError, KafkaException, Message, Producer

from rendezvous.kernel.clock import Clock, now_ms
from rendezvous.kernel.kafka import CONFLUENT, KafkaClients, produce
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.wire import DLQ_VALUE_DROPPED, Candidate, Result, deadletter_headers, encode
from rendezvous.routing.router import Decision

__all__ = ["Ack", "written_ms", "build_result", "ResultWriter"]

log = logging.getLogger("rendezvous.service")


class Ack:
    """An input record held until ``refs`` pieces of work on it are durable."""

    __slots__ = ("event", "refs", "reply_to")

    def __init__(self, event: Any, refs: int = 1, reply_to: str | None = None) -> None:
        self.event, self.refs, self.reply_to = event, refs, reply_to

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            self.event.ack()


def written_ms(msg: Message, served_ms: float) -> float:
    """When the broker wrote a result: its LogAppendTime (the results topic is created with it),
    capped by ``served_ms``, when the worker learned of it. Without it (a topic made elsewhere,
    Tansu), ``served_ms``, which is later by up to one poll of the delivery reports (librdkafka's
    ``msg.latency()`` is measured when called, so it is no better)."""
    kind, stamp = msg.timestamp()
    return min(float(stamp), served_ms) if kind == TIMESTAMP_LOG_APPEND_TIME and stamp > 0 else served_ms


def build_result(decision: Decision, worker: str) -> Result:
    pending, choice = decision.pending, decision.choice
    t0 = pending.t0
    candidates = {
        model: Candidate(view.model_version, round(view.arrived_ms - t0, 3), view.score, view.error)
        for model, view in pending.scores.items()
    }
    chosen = pending.scores.get(choice.model) if choice.model else None
    plan = pending.plan
    return Result(
        request_id=pending.request_id,
        model=choice.model,
        model_version=chosen.model_version if chosen else None,
        score=chosen.score if chosen else plan.default_score,
        reason=choice.reason,
        detail=decision.detail,
        latency_ms=round(decision.latency_ms, 3),
        intake_ms=round(pending.seen_ms - t0, 3),
        policy=plan.policy,
        policy_version=plan.policy_version,
        candidates=candidates,
        request_ms=t0,
        decided_ms=decision.decided_ms,
        worker=worker,
        event_time=pending.event_time,
        audit=dict(plan.audit) if plan.audit else None,
        due_ms=decision.due_ms,
    )


class ResultWriter:
    """Produces results and dead letters with an idempotent confluent-kafka producer.

    ``on_written(decision, written_ms)`` is called when the broker has acknowledged a
    result; ``written_ms`` is when the acknowledgement reached the producer, measured by
    librdkafka (not when this worker got round to serving the report).
    """

    def __init__(self, kafka: KafkaSettings, topics: Topics, worker: str, on_fatal: Callable[[str], None],
                 on_written: Callable[[Decision, float], None] | None = None, clients: KafkaClients = CONFLUENT,
                 clock: Clock = now_ms) -> None:
        self.topics, self.worker, self._on_fatal, self._on_written = topics, worker, on_fatal, on_written
        self.clock = clock
        self._producer: Producer = clients.producer(kafka.producer(**{"client.id": f"rendezvous-{worker}"}))
        # The idempotent producer reports deliveries of one partition in order, so each
        # report releases the oldest holds of its partition: no closure per result.
        self._in_flight: dict[int, deque[Decision]] = defaultdict(deque)
        self.results_written = 0
        self.deadletters_written = 0
        self.deadletters: Counter = Counter()  # by reason kind, for /metrics

    def write(self, decision: Decision) -> Result:
        pending = decision.pending
        result = build_result(decision, self.worker)
        self._in_flight[pending.partition].append(decision)
        value, key = encode(result), pending.request_id.encode()
        self._produce(self.topics.results, value, key, pending.partition, self._result_delivered)
        reply_to = getattr(pending.token, "reply_to", None)
        if reply_to is not None:  # a copy for the gateway that asked; the results topic stays the record
            self._produce(reply_to, value, key, -1, self._reply_delivered)
        self.results_written += 1
        return result

    def reply_probe(self, request_id: str, reply_to: str, policy: str, policy_version: int) -> None:
        """Answer a gateway's readiness probe on its reply topic only: not a result, not traffic."""
        now = self.clock()
        result = Result(request_id=request_id, model=None, model_version=None, score=None, reason="default",
                        detail="readiness probe: answered at once, not routed", latency_ms=0.0, intake_ms=0.0,
                        policy=policy, policy_version=policy_version, candidates={}, request_ms=now,
                        decided_ms=now, worker=self.worker)
        self._produce(reply_to, encode(result), request_id.encode(), -1, self._reply_delivered)

    def _result_delivered(self, err: KafkaError | None, msg: Message) -> None:
        decision = self._in_flight[msg.partition()].popleft()
        if err is not None:
            self._on_fatal(f"could not write a result to {self.topics.results}: {err.str()}")
            return
        pending = decision.pending
        pending.token.release()
        for hold in pending.score_tokens:
            hold.release()
        if self._on_written is not None:
            self._on_written(decision, written_ms(msg, self.clock()))

    def _reply_delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:  # the gateway answers its caller 504 at its deadline; nothing else waits on this
            log.warning("could not write a reply to %s: %s", msg.topic(), err.str())

    def dead_letter(self, hold: Ack, key: bytes | None, value: bytes | None, reason: str,
                    topic: str, partition: int, offset: int, kind: str = "invalid") -> None:
        """Park a record the service cannot use; ``kind`` is a short, bounded label for metrics.

        A record too large for the producer (or the broker) is parked without its value,
        with a header saying so: the original stays where the headers point.
        """
        headers = deadletter_headers(reason, topic, partition, offset, f"rendezvous/{self.worker}")

        def without_value(why: str) -> None:
            dropped = [*headers, (DLQ_VALUE_DROPPED, f"{len(value or b'')} bytes not copied: {why}".encode())]
            self._produce(self.topics.deadletter, None, key, -1, delivered, dropped)

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE and msg.value() is not None:
                without_value(err.str())
            elif err is not None:
                self._on_fatal(f"could not write a dead letter to {self.topics.deadletter}: {err.str()}")
            else:
                hold.release()

        try:
            self._produce(self.topics.deadletter, value, key, -1, delivered, headers)  # -1: the partitioner's choice
        except KafkaException as exc:  # refused locally, e.g. over the producer's message.max.bytes
            without_value(exc.args[0].str() if exc.args else str(exc))
        self.deadletters[kind] += 1
        self.deadletters_written += 1

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, partition: int,
                 on_delivery: Callable[[KafkaError | None, Message], None],
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        produce(self._producer, topic, value, key, partition, on_delivery, headers)

    def publish(self, topic: str, value: bytes, key: bytes, partition: int = 0,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue a control record (e.g. a rollback's policy) without waiting; a failure is logged."""
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                log.error("could not write to %s: %s", topic, err.str())

        self._produce(topic, value, key, partition, delivered, headers)

    def poll(self) -> int:
        """Serve delivery reports (which acknowledge input records)."""
        return self._producer.poll(0)

    def flush(self, timeout: float = 10.0) -> int:
        return self._producer.flush(timeout)

    def __len__(self) -> int:
        return len(self._producer)
