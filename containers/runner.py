"""The model runner: reads every request, scores it, writes annotated scores.

This is the program inside a model container (or a local process). Each model
version is one consumer group, so every model sees every request and replicas
of one version share the partitions. Scores go to the partition number their
request came from, grouped into one record per partition per batch: under load
a poll returns many requests and one record carries all their scores, so the
rendezvous pays one Faust event per batch instead of one per score.

A request's offset is stored for commit only once its scores are durably in the
scores topic, so a runner that dies loses nothing: its successor re-scores the
uncommitted requests (and the rendezvous counts the repeats as duplicates).

Each stored offset carries the requests topic's id (``log_stamp``). A partition
assigned with a commit stamped with another id than the topic's own belongs to a
new log (the topic was made again, or the broker lost its data) and is read from
its start, even where the new log has already grown past the committed offset.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from containers.spec import Model, ModelIdentity
from rendezvous.kernel.client_config import describe
from rendezvous.kernel.clock import now_ms
from rendezvous.kernel.errors import OperationsError
from rendezvous.kernel.kafka import committed_in_another_log, log_stamp, poll_batch, produce, topic_id
from rendezvous.kernel.link import BrokerLink
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import PROBE, Topics
from rendezvous.kernel.trust import signed_headers
from rendezvous.kernel.wire import (
    DEFAULT_MAX_REQUEST_BYTES,
    Request,
    Score,
    ScoreBatch,
    WireError,
    decode_request,
    encode,
)

__all__ = ["LATENCY_BUCKETS", "RunnerError", "LAG_EVERY_S", "group_for", "RunnerMetrics", "ModelRunner"]

log = logging.getLogger("rendezvous.runner")

#: (partition, offset, request or None if unreadable, record timestamp ms)
_Item = tuple[int, int, Request | None, float]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class RunnerError(OperationsError):
    """The runner cannot go on safely (e.g. it could not write scores); restart it."""


LAG_EVERY_S = 1.0  # how often the runner measures its backlog (read by /metrics)


def group_for(identity: ModelIdentity, topics: Topics) -> str:
    """The consumer group of a model version: its replicas share it, other models do not."""
    return topics.group(f"model.{identity.name}.{identity.version}")


class RunnerMetrics:
    def __init__(self, registry: CollectorRegistry, identity: ModelIdentity) -> None:
        labels = {"model": identity.name, "version": identity.version}
        self.requests = Counter("rendezvous_model_requests", "Requests read by the model runner",
                                list(labels), registry=registry).labels(**labels)
        scores = Counter("rendezvous_model_scores", "Scores written, by outcome",
                         [*labels, "outcome"], registry=registry)
        self.scored, self.errors = scores.labels(**labels, outcome="ok"), scores.labels(**labels, outcome="error")
        self.invalid = Counter("rendezvous_model_invalid_requests", "Requests the runner could not read",
                               list(labels), registry=registry).labels(**labels)
        self.scoring_seconds = Histogram(
            "rendezvous_model_scoring_seconds", "Time the model took to score (per call)",
            list(labels), buckets=LATENCY_BUCKETS, registry=registry).labels(**labels)
        self.request_to_score_seconds = Histogram(
            "rendezvous_model_request_to_score_seconds", "From the request's timestamp to its score being ready",
            list(labels), buckets=LATENCY_BUCKETS, registry=registry).labels(**labels)


class ModelRunner:
    """Consume requests, score them with ``model``, produce :class:`ScoreBatch` records."""

    def __init__(
        self,
        model: Model,
        identity: ModelIdentity,
        kafka: KafkaSettings,
        topics: Topics = Topics(),
        *,
        group: str | None = None,
        max_batch: int = 500,
        linger_ms: float = 2.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        registry: CollectorRegistry | None = None,
        score_key: bytes | None = None,
    ) -> None:
        self.model, self.identity, self.topics = model, identity, topics
        self._kafka = {"bootstrap": kafka.bootstrap, **describe(kafka.client)}  # redacted: shown by /info
        self.max_batch, self.linger_ms, self.max_request_bytes = max_batch, linger_ms, max_request_bytes
        self.registry = registry or CollectorRegistry()
        self.metrics = RunnerMetrics(self.registry, identity)
        Gauge("rendezvous_model_consumer_lag_records", "Requests on the broker this replica has not read yet",
              ["model", "version"], registry=self.registry).labels(identity.name, identity.version
                                                                  ).set_function(lambda: self._lag)
        self._lag, self._lag_checked = 0.0, 0.0
        self._predict_many = getattr(model, "predict_many", None)
        self._consumer = Consumer(kafka.consumer(group or group_for(identity, topics)))
        self._producer = Producer(kafka.producer())
        self._admin = AdminClient(kafka.admin())  # the requests topic's id, at each assignment
        self._log_stamp: str | None = None  # what stored offsets carry: the id of the log they were read from
        self.link = BrokerLink(kafka)
        self._score_key = score_key  # signs every score record: the worker refuses unsigned ones if it holds keys
        self._assigned: set[int] | None = None  # None until the group first assigns us
        self._fatal: str | None = None
        self._pending: dict[int, list[Score]] = defaultdict(list)  # scores not yet produced, by partition
        self._covered: dict[int, int] = {}  # highest input offset the pending scores complete, by partition
        self._first_pending_ms: float | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        return self._assigned is not None and self.link.reachable

    def info(self) -> dict[str, Any]:
        return {"model": self.identity.name, "version": self.identity.version, "instance": self.identity.instance,
                "artifact_sha256": self.identity.artifact_sha256, "partitions": sorted(self._assigned or ()),
                "kafka": self._kafka, "broker_problem": self.link.problem()}

    def run(self, stop: threading.Event) -> None:
        """Score until ``stop`` is set, then flush and commit. Raises :class:`RunnerError`."""
        self._consumer.subscribe([self.topics.requests], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.link.start()
        log.info("model %s %s consuming %s", self.identity.name, self.identity.version, self.topics.requests)
        try:
            while not stop.is_set():
                messages = poll_batch(self._consumer, self.max_batch, timeout=0.05)
                if messages:
                    self._process(messages)
                self._producer.poll(0)
                if time.monotonic() - self._lag_checked >= LAG_EVERY_S:
                    self._lag, self._lag_checked = self.consumer_lag(), time.monotonic()
                if self._fatal:
                    raise RunnerError(self._fatal)
        finally:
            self._close()

    def _close(self) -> None:
        self.link.stop()
        self._flush()
        remaining = self._producer.flush(10)
        if remaining:
            log.error("%d score records were not delivered before shutdown; their requests will be re-scored", remaining)
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("final commit failed: %s", exc)
        self._consumer.close()

    def consumer_lag(self) -> float:
        """Backlog of the partitions this replica owns (from the watermarks its fetches last saw).

        Called from the scoring loop only: another thread calling into the consumer waits
        for the loop's poll to let go of it, which under load it never does."""
        try:
            positions = self._consumer.position(
                [TopicPartition(self.topics.requests, p) for p in sorted(self._assigned or ())])
            lag = 0
            for tp in positions:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= 0:
                    lag += max(high - tp.offset, 0)
            return float(lag)
        except (KafkaException, RuntimeError):  # closed, or not assigned yet
            return 0.0

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = (self._assigned or set()) | {tp.partition for tp in partitions}
        log.info("assigned partitions %s", sorted(self._assigned))
        new = self._new_logs(consumer, partitions)
        if new:
            log.warning("partitions %s of %s: the log is new (the broker lost its data, or the topic was made again), "
                        "not the one the group's offsets were committed in: reading them from their start",
                        sorted(new), self.topics.requests)
            for tp in partitions:
                if tp.partition in new:
                    tp.offset = OFFSET_BEGINNING
            consumer.assign(partitions)

    def _new_logs(self, consumer: Consumer, partitions: list[TopicPartition]) -> set[int]:
        """The partitions whose committed offset was stamped with another id than the requests topic's own."""
        found = topic_id(self._admin, self.topics.requests, timeout=5)
        self._log_stamp = log_stamp(found) if found is not None else None
        if found is None:  # no ids on this broker (Tansu), or it does not answer now
            return set()
        try:
            committed = consumer.committed([TopicPartition(tp.topic, tp.partition) for tp in partitions], timeout=10)
        except KafkaException as exc:
            log.warning("could not read the group's committed offsets (%s): taking them as they are", exc)
            return set()
        return {tp.partition for tp in committed if committed_in_another_log(tp, found)}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Write what we owe before the partitions go, so their offsets are stored and committed.
        self._flush()
        self._producer.flush(10)
        try:
            consumer.commit(asynchronous=False)
        except KafkaException:
            pass  # nothing stored yet
        self._assigned = (self._assigned or set()) - {tp.partition for tp in partitions}

    # ------------------------------------------------------------------ the work

    def _process(self, messages: list[Message]) -> None:
        seen = now_ms()
        items: list[_Item] = []
        probes = 0
        for message in messages:
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", message.error())
                continue
            headers = message.headers()
            if headers and any(key == PROBE for key, _ in headers):
                # a gateway's readiness probe: the worker answers it, no model scores it, it is no request
                items.append((message.partition(), message.offset(), None, message.timestamp()[1]))
                probes += 1
                continue
            value = message.value()
            try:
                if value is None or len(value) > self.max_request_bytes:
                    raise WireError("empty or too large")
                request = decode_request(value)
            except WireError:
                self.metrics.invalid.inc()  # the rendezvous dead-letters it; we just skip it
                request = None
            items.append((message.partition(), message.offset(), request, message.timestamp()[1]))
        self.metrics.requests.inc(len(items) - probes)
        valid = [item for item in items if item[2] is not None]
        if self._predict_many is not None and len(valid) > 1:
            self._score_together(valid, seen)
            for partition, offset, _, _ in items:
                self._covered[partition] = offset
        else:
            for item in items:
                if item[2] is not None:
                    self._score_one(item, seen)
                # An offset is covered once its request is scored (or found unreadable).
                self._covered[item[0]] = item[1]
                if self._first_pending_ms is not None and now_ms() - self._first_pending_ms >= self.linger_ms:
                    self._flush()  # a slow model's early scores must not wait for the whole batch
        self._flush()

    def _score_together(self, batch: list[_Item], seen: float) -> None:
        started = now_ms()
        try:
            values = self._predict_many([request.features for _, _, request, _ in batch])
        except Exception:  # noqa: BLE001 - isolate the request(s) that broke the batch
            for item in batch:
                self._score_one(item, seen)
            return
        finished = now_ms()
        self.metrics.scoring_seconds.observe((finished - started) / 1000.0)
        for (partition, _, request, record_ms), value in zip(batch, values, strict=True):
            self._add(partition, Score(request.request_id, seen, started, finished, score=float(value)), record_ms)

    def _score_one(self, item: _Item, seen: float) -> None:
        partition, _, request, record_ms = item
        started = now_ms()
        value, error = None, None
        try:
            value = float(self.model.predict_one(request.features))
        except Exception as exc:  # noqa: BLE001 - a model's failure is reported as a score, never a crash
            error = f"{type(exc).__name__}: {exc}"[:500]
        finished = now_ms()
        self.metrics.scoring_seconds.observe((finished - started) / 1000.0)
        self._add(partition, Score(request.request_id, seen, started, finished, value, error), record_ms)

    def _add(self, partition: int, score: Score, record_ms: float) -> None:
        (self.metrics.errors if score.error else self.metrics.scored).inc()
        self.metrics.request_to_score_seconds.observe(max(score.finished_ms - record_ms, 0.0) / 1000.0)
        self._pending[partition].append(score)
        if self._first_pending_ms is None:
            self._first_pending_ms = score.finished_ms

    def _flush(self) -> None:
        """Produce one record per partition with the scores so far; store offsets on delivery."""
        identity = self.identity
        for partition, offset in self._covered.items():
            scores = self._pending.pop(partition, None)
            if not scores:
                self._store(partition, offset)  # only unreadable requests: nothing to wait for
                continue
            record = ScoreBatch(identity.name, identity.version, identity.host, scores,
                                identity.instance, identity.artifact_sha256)
            self._produce(partition, scores[0].request_id.encode(), encode(record), offset)
        self._covered.clear()
        self._first_pending_ms = None

    def _produce(self, partition: int, key: bytes, value: bytes, offset: int) -> None:
        def delivered(err: KafkaError | None, _msg: Message, partition: int = partition, offset: int = offset) -> None:
            if err is not None:
                self._fatal = f"could not write scores to {self.topics.scores}[{partition}]: {err.str()}"
            else:
                self._store(partition, offset)

        produce(self._producer, self.topics.scores, value, key, partition, delivered,
                signed_headers(self._score_key, value))

    def _store(self, partition: int, offset: int) -> None:
        try:
            stamp = {} if self._log_stamp is None else {"metadata": self._log_stamp}
            self._consumer.store_offsets(offsets=[TopicPartition(self.topics.requests, partition, offset + 1, **stamp)])
        except KafkaException:
            pass  # the partition was revoked meanwhile; its new owner re-scores from the last commit
