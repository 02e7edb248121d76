"""The pipeline end to end on the real broker: three scripted models and one rendezvous worker.

Each request's features tell the scripted models how long to take and whether to
fail, so every timing rule of the fallback chain is exercised by real processes:
m3 is preferred for 30 ms, then m2 is accepted too for 30 ms, then m1; SLA 100 ms.
"""

from __future__ import annotations

import signal
import time

import pytest
from confluent_kafka import Producer

from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.wire import (
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    DLQ_VALUE_DROPPED,
    Score,
    ScoreBatch,
    encode,
)
from tests.conftest import CHAIN_POLICY, System, eventually, scripted_spec, write_policy

pytestmark = pytest.mark.slow
SLA = 100.0


@pytest.fixture(scope="module")
def chain(broker, tmp_path_factory) -> System:
    directory = tmp_path_factory.mktemp("chain")
    s = System(KafkaSettings(broker.bootstrap), directory)
    models = s.start_models(*(scripted_spec(directory, m, score) for m, score in (("m1", 0.1), ("m2", 0.2), ("m3", 0.3))))
    workers = s.start_workers(write_policy(directory, CHAIN_POLICY),
                              extra=["--max-request-bytes", "4096", "--orphan-ttl-ms", "1000"])
    s.wait_ready(models + workers)
    s.warm_up()
    s.models, s.worker = dict(zip(("m1", "m2", "m3"), models, strict=False)), workers[0]
    yield s
    s.close()


def test_every_request_gets_exactly_one_result(chain: System):
    ids = [f"bulk-{i}" for i in range(300)]
    chain.send([(rid, {}) for rid in ids], rate=150)
    results = chain.results_for(ids)
    assert all(len(r) == 1 for r in results.values()), {k: len(v) for k, v in results.items() if len(v) != 1}
    late = sorted((r[0].latency_ms, r[0].intake_ms) for r in results.values() if r[0].latency_ms > SLA)
    assert not late, late
    assert {r[0].policy for r in results.values()} == {"test-chain"}


@pytest.mark.parametrize(
    ("features", "model", "reason", "earliest", "latest"),
    [
        ({}, "m3", "preferred", 0, 30),
        ({"m3_delay_ms": 70}, "m2", "fallback", 30, 40),  # m2 is taken when its stage opens
        ({"m3_delay_ms": 45, "m2_delay_ms": 10}, "m2", "fallback", 30, 40),
        ({"m3_delay_ms": 80, "m2_delay_ms": 80}, "m1", "fallback", 60, 70),
        ({"m3_delay_ms": 80, "m2_delay_ms": 40}, "m2", "fallback", 40, 60),  # m2 late but before m1's stage (60)
        ({"m3_fail": True}, "m2", "fallback", 0, 25),  # a failure is not waited out
        ({"m3_fail": True, "m2_fail": True}, "m1", "fallback", 0, 25),
        ({"m3_fail": True, "m2_fail": True, "m1_fail": True}, None, "default", 0, 25),
    ],
)
def test_fallback_order_and_waits_are_honoured(chain: System, features, model, reason, earliest, latest):
    result = chain.ask(f"chain-{time.monotonic_ns()}", features)
    assert (result.model, result.reason) == (model, reason), result.detail
    assert earliest <= result.latency_ms <= latest, result.detail
    if model is None:
        assert result.score == 0.25  # the policy's default
    else:
        assert result.score == {"m1": 0.1, "m2": 0.2, "m3": 0.3}[model]
    time.sleep(0.1)  # let slow models finish before the next case


def test_default_at_the_sla_when_no_model_answers(chain: System):
    for name in chain.models.values():
        chain.signal(name, signal.SIGSTOP)
    try:
        ids = [f"silent-{i}" for i in range(5)]
        chain.send([(rid, {}) for rid in ids])
        results = chain.results_for(ids, timeout=10)
    finally:
        for name in chain.models.values():
            chain.signal(name, signal.SIGCONT)
    for [result] in results.values():
        assert (result.model, result.reason, result.score) == (None, "default", 0.25)
        assert SLA <= result.latency_ms <= SLA + 10
        assert "no model in the chain had answered" in result.detail
    # the stopped models answer later: counted as late, never re-emitted
    time.sleep(1.5)
    late = chain.stats(chain.worker)["dropped_scores"]
    assert all(late.get(f"late/{m}", 0) >= 5 for m in ("m1", "m2", "m3")), late
    assert all(len(chain.collector.results[rid]) == 1 for rid in ids)


def test_a_hung_model_does_not_break_the_sla(chain: System):
    chain.signal(chain.models["m3"], signal.SIGSTOP)
    try:
        ids = [f"hung-{i}" for i in range(200)]
        chain.send([(rid, {}) for rid in ids], rate=100)
        results = chain.results_for(ids, timeout=15)
    finally:
        chain.signal(chain.models["m3"], signal.SIGCONT)
    assert all(len(r) == 1 for r in results.values())
    assert max(r[0].latency_ms for r in results.values()) <= SLA
    assert {(r[0].model, r[0].reason) for r in results.values()} == {("m2", "fallback")}


def test_duplicate_and_unknown_scores_are_counted_and_dropped(chain: System):
    rid = f"dup-{time.monotonic_ns()}"
    result = chain.ask(rid, {})
    before = chain.stats(chain.worker)["dropped_scores"]
    partition = next(m for m in chain.read_topic(chain.topics.results, 10**6, timeout=3)
                     if m.key() == rid.encode()).partition()
    score = Score(rid, 1.0, 1.0, 2.0, score=0.9)
    for model in ("m3", "intruder"):  # m3 already answered it; intruder is not in the policy
        chain.produce_raw(chain.topics.scores, encode(ScoreBatch(model, "1", "h", [score])), partition=partition)
    chain.produce_raw(chain.topics.scores, encode(ScoreBatch("m1", "1", "h", [Score("never-sent", 1, 1, 2, 0.5)])))
    time.sleep(2.0)  # past the 1 s orphan TTL
    after = chain.stats(chain.worker)["dropped_scores"]
    assert after.get("duplicate/m3", 0) == before.get("duplicate/m3", 0) + 1
    assert after.get("unknown_model/intruder", 0) == before.get("unknown_model/intruder", 0) + 1
    assert after.get("unknown_request/m1", 0) == before.get("unknown_request/m1", 0) + 1
    assert len(chain.collector.results[rid]) == 1 and result.model == "m3"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"k1", b"this is not json", "malformed"),
        (b"k2", b'{"features": {"x": 1}}', "missing required field `request_id`"),
        (b"k3", b'{"request_id": "r", "features": [1, 2]}', "$.features"),
        (b"k4", encode({"request_id": "big", "features": {"blob": "x" * 5000}}), "too large"),
        (None, None, "empty record"),
        (b"k5", b'{"request_id": "deep", "features": {"x": ' + b"[" * 1500 + b"]" * 1500 + b"}}", "nested too deeply"),
    ],
)
def test_bad_requests_go_to_the_dead_letter_topic_with_reason_and_bytes(chain: System, key, value, reason):
    partition, offset = chain.produce_raw(chain.topics.requests, value, key, partition=1)

    def of_this_request(message) -> bool:
        h = dict(message.headers())
        return (h[DLQ_TOPIC].decode(), int(h[DLQ_PARTITION]), int(h[DLQ_OFFSET])) == (
            chain.topics.requests, partition, offset)

    deadline = time.monotonic() + 15
    while not (letters := [m for m in chain.read_topic(chain.topics.deadletter, 10**6, timeout=1) if of_this_request(m)]):
        assert time.monotonic() < deadline, "no dead letter for the bad request"
    [letter] = letters  # exactly one
    assert reason in dict(letter.headers())[DLQ_REASON].decode()
    assert (letter.key(), letter.value()) == (key, value)  # the original bytes, untouched
    assert chain.ask(f"after-bad-{time.monotonic_ns()}", {}).model == "m3"  # the service carries on


def _dead_letter_for(chain: System, topic: str, partition: int, offset: int):  # noqa: ANN202
    def find():  # noqa: ANN202
        for m in chain.read_topic(chain.topics.deadletter, 10**6, timeout=1):
            h = dict(m.headers())
            if (h[DLQ_TOPIC].decode(), int(h[DLQ_PARTITION]), int(h[DLQ_OFFSET])) == (topic, partition, offset):
                return m
        return None
    return eventually(find, timeout=15, every=0)


def test_a_request_too_large_to_copy_is_dead_lettered_without_its_value(chain: System):
    """Over the producer's 1,000,000-byte limit the original cannot be copied: it is parked by reference."""
    producer, landed = Producer(chain.kafka.producer(**{"message.max.bytes": 4_000_000})), []
    value = encode({"request_id": "huge", "features": {"blob": "x" * 1_500_000}})
    producer.produce(chain.topics.requests, value, b"huge", partition=2,
                     on_delivery=lambda err, msg: landed.append((err, msg.partition(), msg.offset())))
    assert producer.flush(30) == 0 and landed and landed[0][0] is None, landed
    letter = _dead_letter_for(chain, chain.topics.requests, landed[0][1], landed[0][2])
    assert letter is not None, "no dead letter for the oversized request"
    headers = dict(letter.headers())
    assert "too large" in headers[DLQ_REASON].decode() and letter.value() is None
    assert headers[DLQ_VALUE_DROPPED].decode().startswith(f"{len(value)} bytes")
    assert chain.ask(f"after-huge-{time.monotonic_ns()}", {}).model == "m3"  # the service carries on


def test_undecodable_scores_and_requests_stop_nothing(chain: System):
    """Invalid UTF-8 on the scores topic is dead-lettered; in a request it is refused by the models, not fatal."""
    p, o = chain.produce_raw(chain.topics.scores, b'{"model": "m1", "model_version": "\xff\xfe"}', b"s", partition=0)
    assert _dead_letter_for(chain, chain.topics.scores, p, o) is not None
    pids = {name: chain.pid(name) for name in chain.models.values()}
    chain.produce_raw(chain.topics.requests, b'{"request_id": "utf", "features": {"x": "\xff\xfe"}}', b"utf")
    assert chain.ask(f"after-utf-{time.monotonic_ns()}", {}).model == "m3"
    assert {name: chain.pid(name) for name in chain.models.values()} == pids  # no model runner died
