"""The embedded broker's engines: Kafka keeps what it acknowledged across restarts and applies retention;
Tansu still carries the whole pipeline (the smoke test of the engine for machines without Java)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from rendezvous.kernel.admin import create_topic, ensure_topics
from rendezvous.kernel.kafka import read_range, since_offsets
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.operations import embedded
from rendezvous.operations.broker import KafkaBroker, TansuBroker, resolve_engine
from rendezvous.operations.kafka_dist import kafka_available
from rendezvous.service.recovery import recover_partitions
from tests.conftest import CHAIN_POLICY, System, settings_for, wait_until, write_policy
from tests.rule import Chain, check

CHAIN = Chain((("m3", 30), ("m2", 30), ("m1", None)), sla_ms=100)  # CHAIN_POLICY, restated

needs_kafka = pytest.mark.skipif(not kafka_available(), reason="needs Java 17+ for the Kafka engine")


def _produce(kafka: KafkaSettings, topic: str, count: int, start: int = 0) -> list[tuple[int, int]]:
    """``count`` records, each acknowledged by the broker (acks=all); their (partition, offset)."""
    producer, acked = Producer(kafka.producer(acks="all")), []
    for i in range(start, start + count):
        producer.produce(topic, b"%d" % i, b"%d" % i, partition=i % 2,
                         on_delivery=lambda err, msg: acked.append((msg.partition(), msg.offset())) if err is None else None)
    assert producer.flush(30) == 0
    assert len(acked) == count
    return acked


def _commit_once_the_coordinator_is_ready(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    """A broker just started may still be loading its offsets topic: its "not coordinator" answers are
    retriable (as librdkafka's own commits retry them), anything else fails the test."""
    retriable = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                 KafkaError.COORDINATOR_NOT_AVAILABLE}

    def commit() -> bool:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() not in retriable:
                raise AssertionError(f"the commit failed: {exc}") from exc
            return False
        return True
    wait_until(commit, "the offsets committed", timeout=30)


def _read_all(kafka: KafkaSettings, topic: str) -> list[bytes]:
    consumer = Consumer(kafka.consumer(f"reader-{time.monotonic_ns()}", **{"enable.auto.commit": False}))
    try:
        return sorted((m.value() for m in read_range(consumer, topic, since_offsets(consumer, topic, None, 20), 20)),
                      key=int)
    finally:
        consumer.close()


@needs_kafka
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_kafka_restart_loses_no_acknowledged_record_nor_committed_offset(tmp_path: Path, how: str):
    """Stopped cleanly or killed, the broker comes back on the same data with every acknowledged record."""
    broker = KafkaBroker(data_dir=tmp_path / "data", log_path=tmp_path / "broker.log")
    broker.start()
    try:
        kafka = KafkaSettings(broker.bootstrap)
        create_topic(kafka, "kept", 2)
        acked = _produce(kafka, "kept", 500)
        group = Consumer(kafka.consumer("kept-group", **{"enable.auto.commit": False}))
        _commit_once_the_coordinator_is_ready(group, [TopicPartition("kept", 0, 100), TopicPartition("kept", 1, 50)])
        group.close()
        if how == "sigkill":
            os.kill(broker.pid, signal.SIGKILL)
        broker.stop()
        broker.start()  # the same data directory and port
        kafka = KafkaSettings(broker.bootstrap)
        assert _read_all(kafka, "kept") == [b"%d" % i for i in range(500)]
        group = Consumer(kafka.consumer("kept-group"))
        committed = group.committed([TopicPartition("kept", 0), TopicPartition("kept", 1)], timeout=20)
        group.close()
        assert [(tp.partition, tp.offset) for tp in committed] == [(0, 100), (1, 50)]
        assert len(set(acked)) == 500  # every record was acknowledged at its own offset before the restart
    finally:
        broker.stop()


@needs_kafka
def test_every_topic_the_system_creates_has_retention_and_kafka_applies_it(tmp_path: Path):
    broker = KafkaBroker(log_path=tmp_path / "broker.log",
                         properties_extra={"log.retention.check.interval.ms": "300",  # check often, for the test
                                           "log.initial.task.delay.ms": "0"})
    broker.start()
    try:
        kafka = KafkaSettings(broker.bootstrap)
        topics = Topics.with_prefix("kept")
        ensure_topics(kafka, topics, 2, retention_ms=1500)
        admin = AdminClient(kafka.admin())
        resources = [ConfigResource("topic", name) for name in topics.all()]
        configs = {r.name: f.result(10) for r, f in admin.describe_configs(resources).items()}
        for name in (topics.requests, topics.scores, topics.results, topics.outcomes):
            assert configs[name]["retention.ms"].value == "1500", name
        assert configs[topics.deadletter]["retention.ms"].value == str(7 * 24 * 3_600_000)
        assert configs[topics.policies]["cleanup.policy"].value == "compact"
        assert configs[topics.presence]["cleanup.policy"].value == "compact,delete"
        assert configs[topics.presence]["retention.ms"].value == str(24 * 3_600_000)
        # Kafka deletes a segment past retention: the older requests go.
        _produce(kafka, topics.requests, 10)
        time.sleep(1.6)  # not synchronisation: the records must be older than retention.ms (then bounded waits)
        _produce(kafka, topics.requests, 10, start=10)  # rolls a new segment (segment.ms passed)
        consumer = Consumer(kafka.consumer("probe"))
        try:
            def start_offsets() -> bool:
                lows = [consumer.get_watermark_offsets(TopicPartition(topics.requests, p), timeout=5)[0] for p in (0, 1)]
                return all(low >= 5 for low in lows)
            wait_until(start_offsets, "retention deletes the expired segment", timeout=30)
        finally:
            consumer.close()
        # (the newer records expire too, a moment later: only they may remain)
        assert set(_read_all(kafka, topics.requests)) <= {b"%d" % i for i in range(10, 20)}
    finally:
        broker.stop()


def test_auto_engine_is_kafka_where_java_runs():
    assert resolve_engine("auto") == ("kafka" if kafka_available() else "tansu")
    assert resolve_engine("TANSU") == "tansu"


@pytest.mark.slow
def test_the_pipeline_still_runs_on_tansu(tmp_path: Path):
    """The engine for machines without Java: a request answered by the rule, the scores of every model."""
    tansu = TansuBroker(log_path=tmp_path / "tansu.log")
    tansu.start()
    system = None
    try:
        system = System(settings_for(tansu), tmp_path)
        assert system.kafka.fetch_wait_ms == 5  # Tansu holds every fetch for its full wait
        models = system.start_chain_models()
        workers = system.start_workers(write_policy(tmp_path, CHAIN_POLICY))
        system.wait_ready(models + workers)
        system.warm_up()
        ids = [f"tansu-{i}" for i in range(50)]
        system.send([(rid, {}) for rid in ids], rate=100)
        results = system.results_for(ids)
        assert all(len(r) == 1 for r in results.values())
        for [result] in results.values():
            check(result, CHAIN)

        # Tansu reports a partition's end as its last batch's first offset + 1, below the offsets the group
        # commits once a burst came in one batch: a new owner must not take that for a new log (a broker that
        # lost its data) and read the partition again from its start
        burst = [f"burst-{i}" for i in range(200)]
        system.send([(rid, {}) for rid in burst])
        system.results_for(burst)
        consumer = Consumer(system.kafka.consumer(system.topics.namespace, **{"enable.auto.commit": False}))
        try:
            def committed_past_the_reported_end() -> bool:
                tps = [TopicPartition(system.topics.requests, p) for p in range(system.partitions)]
                committed = consumer.committed(tps, timeout=10)
                ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
                return any(c.offset > end for c, end in zip(committed, ends, strict=True))
            wait_until(committed_past_the_reported_end, "a committed offset past the end Tansu reports", timeout=15)
        finally:
            consumer.close()
        recovered = recover_partitions(system.kafka, system.topics, system.topics.namespace, set(range(system.partitions)))
        assert not [p for p, rec in recovered.items() if rec.rewind], "an intact log taken for a new one"
    finally:
        if system is not None:
            system.close()
        tansu.stop()


def test_a_free_port_is_never_one_already_chosen(monkeypatch: pytest.MonkeyPatch):
    """The system may hand out a port again before it is bound: seen as Kafka's broker and controller
    listeners given one port, and the broker refusing to start."""
    offered = iter([40413, 40413, 40414])

    class Socket:  # what the system hands out, in turn
        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(offered)

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", self.port

    monkeypatch.setattr(embedded.socket, "socket", Socket)
    assert embedded.free_port() == 40413
    assert embedded.free_port(avoid={40413}) == 40414
