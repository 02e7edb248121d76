"""The pipeline end to end on the real broker: three scripted models and one rendezvous worker.

Each request's features tell the scripted models how long to take and whether to
fail, so every timing rule of the fallback chain is exercised by real processes:
m3 is preferred for 30 ms, then m2 is accepted too for 30 ms, then m1; SLA 100 ms.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from rendezvous.kernel.wire import (
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    DLQ_VALUE_DROPPED,
    Score,
    ScoreBatch,
    decode_result,
    decode_score_batch,
    encode,
)
from tests.conftest import CHAIN_POLICY, REPO, System, scripted_spec, settings_for, wait_until, write_policy
from tests.rule import Chain, check

pytestmark = pytest.mark.slow
SLA = 100.0
CHAIN = Chain((("m3", 30), ("m2", 30), ("m1", None)), sla_ms=SLA)  # CHAIN_POLICY, as the rule's restatement sees it
SCORES = {"m1": 0.1, "m2": 0.2, "m3": 0.3}


@pytest.fixture(scope="module")
def chain(broker, tmp_path_factory) -> System:
    directory = tmp_path_factory.mktemp("chain")
    with System(settings_for(broker), directory) as s:  # closed even if the setup fails
        models = s.start_models(*(scripted_spec(directory, m, score) for m, score in SCORES.items()))
        workers = s.start_workers(write_policy(directory, CHAIN_POLICY),
                                  extra=["--max-request-bytes", "4096", "--orphan-ttl-ms", "1000",
                                         "--sla-guard-ms", str(CHAIN.guard_ms)])
        s.wait_ready(models + workers)
        s.warm_up()
        s.models, s.worker = dict(zip(SCORES, models, strict=True)), workers[0]
        yield s


def answered_by_the_rule(result) -> None:  # noqa: ANN001
    """The result is what the chain says given the arrivals the worker recorded; its score is its model's."""
    check(result, CHAIN)
    assert result.score == (SCORES[result.model] if result.model else 0.25), result  # 0.25: the policy's default


def scored_by_all(chain: System, rid: str) -> None:
    """Bounded wait until every model has scored ``rid`` (a failure is a score too), so that a slow
    model's backlog does not spill into the next case."""
    wait_until(lambda: chain.scored_by(rid) >= set(SCORES), f"every model scored {rid}", timeout=30)


def test_every_request_gets_exactly_one_result_in_order(chain: System):
    ids = [f"bulk-{i}" for i in range(300)]
    chain.send([(rid, {}) for rid in ids], rate=150)
    results = chain.results_for(ids)
    assert all(len(r) == 1 for r in results.values()), {k: len(v) for k, v in results.items() if len(v) != 1}
    for [result] in results.values():
        answered_by_the_rule(result)
    assert {r[0].policy for r in results.values()} == {"test-chain"}
    # one worker writes each partition's results in the order it decided them
    wanted, by_partition = set(ids), {}
    for message in chain.read_topic(chain.topics.results):  # in offset order per partition
        if message.key().decode() in wanted:
            by_partition.setdefault(message.partition(), []).append(decode_result(message.value()).decided_ms)
    assert sum(map(len, by_partition.values())) == len(ids)
    assert all(times == sorted(times) for times in by_partition.values())


@pytest.mark.parametrize(
    ("features", "never", "why"),
    [
        ({}, set(), ""),
        ({"m3_delay_ms": 70}, set(), ""),
        ({"m3_delay_ms": 45, "m2_delay_ms": 10}, set(), ""),
        ({"m3_delay_ms": 70, "m2_delay_ms": 16}, set(), ""),  # m2 in just before its stage opens: it waits for it
        ({"m3_delay_ms": 80, "m2_delay_ms": 80}, set(), ""),
        ({"m3_delay_ms": 80, "m2_delay_ms": 40}, set(), ""),
        ({"m3_fail": True}, {"m3"}, "m3 failed"),  # a failure is not waited out
        ({"m3_fail": True, "m2_fail": True}, {"m3", "m2"}, "failed"),
        ({"m3_fail": True, "m2_fail": True, "m1_fail": True}, {"m3", "m2", "m1"}, "every model in the chain failed"),
    ],
)
def test_fallback_order_and_waits_are_honoured(chain: System, features, never, why):
    """The answer is the one the chain gives for the arrival times the worker recorded (tests/rule.py);
    a model told to fail is never the answer, and is not waited for."""
    result = chain.ask_in_time("chain", features)  # one that reached the worker in time: a late one is the default
    rid = result.request_id
    answered_by_the_rule(result)
    if why == "m3 failed" and "m3" not in result.candidates:
        # by the worker's record, m3's failure arrived after the decision (a slow machine): the chain had moved
        # on without it, and says so; a failure that arrived in time is named as one
        why = "m3 had not answered"
    assert result.model not in never and why in result.detail, result.detail
    for model, key in (("m3", "m3_delay_ms"), ("m2", "m2_delay_ms")):  # a slept model cannot have answered sooner
        if key in features and model in result.candidates:
            assert result.candidates[model].arrived_ms >= features[key]
    scored_by_all(chain, rid)


def test_default_at_the_guarded_deadline_when_no_model_answers(chain: System):
    for name in chain.models.values():
        chain.signal(name, signal.SIGSTOP)
    try:
        ids = [f"silent-{i}" for i in range(5)]
        chain.send([(rid, {}) for rid in ids])
        results = chain.results_for(ids, timeout=10)  # answered while every model is stopped
    finally:
        for name in chain.models.values():
            chain.signal(name, signal.SIGCONT)
    for [result] in results.values():
        assert (result.model, result.reason, result.score, result.candidates) == (None, "default", 0.25, {})
        assert result.due_ms - result.request_ms == CHAIN.deadline_ms  # the SLA less the guard, by the worker's clock
        assert "no model in the chain had answered" in result.detail
        answered_by_the_rule(result)

    # the stopped models answer later: counted as late, never re-emitted
    def all_late_counted() -> bool:
        late = chain.stats(chain.worker)["dropped_scores"]
        return all(late.get(f"late/{m}", 0) >= 5 for m in SCORES)
    wait_until(all_late_counted, "the stopped models' scores counted as late")
    assert all(len(r) == 1 for r in chain.results_for(ids).values())


def test_a_hung_model_costs_only_its_wait(chain: System):
    """m3 hangs (stopped) far past the SLA: every request is answered while it hangs, by the rule, never by m3."""
    chain.signal(chain.models["m3"], signal.SIGSTOP)
    try:
        ids = [f"hung-{i}" for i in range(200)]
        chain.send([(rid, {}) for rid in ids], rate=100)
        results = chain.results_for(ids, timeout=30)
    finally:
        chain.signal(chain.models["m3"], signal.SIGCONT)
    assert all(len(r) == 1 for r in results.values())
    for [result] in results.values():
        assert result.model != "m3" and "m3" not in result.candidates
        answered_by_the_rule(result)  # hence, when m2 had answered, at m2's stage and not later
    scored_by_all(chain, ids[-1])


def test_sla_misses_are_recorded_and_blamed_on_their_cause(chain: System):
    """A worker frozen with requests in flight decides them late (timer); requests sent while it is frozen
    reach it after they were due (intake). Each result says when it was due and decided."""
    before = chain.stats(chain.worker)["sla_misses"]
    for name in chain.models.values():  # no scores: every request waits for its deadline
        chain.signal(name, signal.SIGSTOP)
    try:
        ids = [f"frozen-{i}" for i in range(100)]
        sender = chain.send_in_background([(rid, {}) for rid in ids], rate=100)
        assert chain.collector.wait_for(ids[:10], 15), "the first requests were not answered"
        chain.signal(chain.worker, signal.SIGSTOP)
        time.sleep(0.6)  # the fault itself (not a wait for anything): the worker is frozen for 0.6 s
        chain.signal(chain.worker, signal.SIGCONT)
        sender.join()
        results = chain.results_for(ids, timeout=30)
    finally:
        chain.signal(chain.worker, signal.SIGCONT)
        for name in chain.models.values():
            chain.signal(name, signal.SIGCONT)
    firsts = [r[0] for r in results.values()]
    for result in firsts:
        answered_by_the_rule(result)
    assert any(r.decided_ms - r.due_ms > 300 for r in firsts), "the freeze should have delayed some decisions"
    missed = [r for r in firsts if r.decided_ms - r.request_ms > SLA]  # decided after the SLA: written after it

    def grown() -> dict[str, int]:  # counted when the broker acknowledges each write
        after = chain.stats(chain.worker)["sla_misses"]
        return {cause: after[cause] - before.get(cause, 0) for cause in after}
    wait_until(lambda: sum(grown().values()) >= len(missed), f"{len(missed)} SLA misses counted")
    assert grown()["timer"] >= 1 and grown()["intake"] >= 1, grown()
    scored_by_all(chain, ids[-1])


def test_duplicate_and_unknown_scores_are_counted_and_dropped(chain: System):
    """Invented model names are counted as one, "other": they never become series of /metrics or keys of /stats."""
    rid = f"dup-{time.monotonic_ns()}"
    result = wait_until(lambda: (r := chain.ask(f"{rid}-{time.monotonic_ns()}", {})).candidates and r,
                        "a result that some model had scored")
    rid, answered = result.request_id, next(iter(result.candidates))  # a model whose score the worker used
    before = chain.stats(chain.worker)["dropped_scores"]
    partition = chain.partition_of(rid)
    score = Score(rid, 1.0, 1.0, 2.0, score=0.9)
    producer = Producer(chain.kafka.producer())
    invented = [f"intruder-{i}" for i in range(40)]  # none is in the policy
    for model in (answered, *invented):  # the first had answered it already
        producer.produce(chain.topics.scores, encode(ScoreBatch(model, "1", "h", [score])), partition=partition)
    producer.produce(chain.topics.scores, encode(ScoreBatch("m1", "1", "h", [Score("never-sent", 1, 1, 2, 0.5)])))
    assert producer.flush(10) == 0
    expected = {f"duplicate/{answered}": 1, "unknown_model/other": len(invented), "unknown_request/m1": 1}

    def counted() -> dict[str, int] | None:  # the never-sent request's score is an orphan until its 1 s TTL
        now = chain.stats(chain.worker)["dropped_scores"]
        grown = {key: now.get(key, 0) - before.get(key, 0) for key in expected}
        return grown if grown == expected else None
    assert wait_until(counted, "the scores counted") == expected
    assert len(chain.results_for([rid])[rid]) == 1
    with urllib.request.urlopen(f"{chain.url(chain.worker)}/metrics", timeout=5) as response:
        assert b"intruder" not in response.read()


def _dead_letter_for(chain: System, topic: str, partition: int, offset: int):  # noqa: ANN202
    """The one dead letter of the record at ``topic``/``partition``@``offset`` (bounded wait)."""
    def origin(message) -> tuple[str, int, int]:  # noqa: ANN001
        h = dict(message.headers())
        return h[DLQ_TOPIC].decode(), int(h[DLQ_PARTITION]), int(h[DLQ_OFFSET])

    # a list, because a Message without a value is falsy (its len() is 0)
    letters = wait_until(lambda: [m for m in chain.read_topic(chain.topics.deadletter)
                                  if origin(m) == (topic, partition, offset)],
                         f"a dead letter for {topic}/{partition}@{offset}")
    assert len(letters) == 1, f"{len(letters)} dead letters for one record"
    return letters[0]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"k1", b"this is not json", "malformed"),
        (b"k2", b'{"features": {"x": 1}}', "missing required field `request_id`"),
        (b"k3", b'{"request_id": "bad-list", "features": [1, 2]}', "$.features"),
        (b"k4", encode({"request_id": "bad-big", "features": {"blob": "x" * 5000}}), "too large"),
        (None, None, "empty record"),
        (b"k5", b'{"request_id": "bad-deep", "features": {"x": ' + b"[" * 1500 + b"]" * 1500 + b"}}",
         "nested too deeply"),
        (b"k6", b'{"request_id": "bad-inf", "features": {"amount": 1e999}}', "Number out of range - at `$.features"),
        (b"k7", b'{"request_id": "bad-utf", "features": {"note": "\xff\xfe"}}', "invalid UTF-8"),
        (b"k8", b'{"request_id": "bad-utf-key", "features": {"n": [{"\xc3": 1}]}}', "invalid UTF-8"),
        (b"k9", b'{"request_id": "bad-event-time", "features": {}, "event_time": -1e400}', "Number out of range"),
    ],
)
def test_bad_requests_go_to_the_dead_letter_topic_with_reason_and_bytes(chain: System, key, value, reason):
    partition, offset = chain.produce_raw(chain.topics.requests, value, key, partition=1)

    letter = _dead_letter_for(chain, chain.topics.requests, partition, offset)
    assert reason in dict(letter.headers())[DLQ_REASON].decode()
    assert (letter.key(), letter.value()) == (key, value)  # the original bytes, untouched
    after = f"after-bad-{time.monotonic_ns()}"
    chain.send([(after, {})])
    answered_by_the_rule(chain.results_for([after])[after][0])  # the service carries on
    # Never answered as well: had the worker taken it, its answer would have been due first
    # (its deadline is earlier), and the results topic has been read to its end.
    named = re.search(rb'"request_id": "([^"]+)"', value or b"")
    assert named is None or named.group(1).decode() not in chain.collector.results


def _readme_kcat_lines() -> list[str]:
    """The shell commands of the README's kcat example (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("```bash\necho 'r-125"):]
    block = block[len("```bash\n"):block.index("```", 3)]
    return [line for line in block.replace("\\\n", "").splitlines() if line and not line.startswith("#")]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="needs kcat (Debian: apt-get install kcat)")
def test_the_readme_kcat_lines_send_a_request_and_read_its_result(chain: System):
    rid = f"kcat-{time.monotonic_ns()}"
    lines = _readme_kcat_lines()
    assert len(lines) == 2, lines
    out = ""
    for line in lines:
        command = (line.replace("127.0.0.1:9092", chain.kafka.bootstrap).replace("r-125", rid)
                   .replace("-t rendezvous.", f"-t {chain.topics.namespace}."))
        if "-C" in command:  # the reading line: until the result is there (it is bounded by wait_until)
            def read(command: str = command) -> str:
                return subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30).stdout
            out = wait_until(read, f"kcat reads the result of {rid}", timeout=30)
        else:
            done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
    key, value = out.strip().split(" ", 1)
    assert key == rid and decode_result(value.encode()).request_id == rid


def test_a_request_too_large_to_copy_is_dead_lettered_without_its_value(chain: System):
    """Over the producer's 1,000,000-byte limit the original cannot be copied: it is parked by reference.

    Kafka refuses such a record by default (topic max.message.bytes is 1 MB); a topic set to take
    larger ones, as here, lets it reach the worker."""
    admin = AdminClient(chain.kafka.admin())
    change = ConfigResource("topic", chain.topics.requests, incremental_configs=[
        ConfigEntry("max.message.bytes", "4000000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([change])[change].result(10)
    producer, landed = Producer(chain.kafka.producer(**{"message.max.bytes": 4_000_000})), []
    value = encode({"request_id": "huge", "features": {"blob": "x" * 1_500_000}})
    producer.produce(chain.topics.requests, value, b"huge", partition=2,
                     on_delivery=lambda err, msg: landed.append((err, msg.partition(), msg.offset())))
    assert producer.flush(30) == 0 and landed and landed[0][0] is None, landed
    letter = _dead_letter_for(chain, chain.topics.requests, landed[0][1], landed[0][2])
    headers = dict(letter.headers())
    assert "too large" in headers[DLQ_REASON].decode() and letter.value() is None
    assert headers[DLQ_VALUE_DROPPED].decode().startswith(f"{len(value)} bytes")
    answered_by_the_rule(chain.ask(f"after-huge-{time.monotonic_ns()}", {}))  # the service carries on


def test_undecodable_scores_and_requests_stop_nothing(chain: System):
    """Invalid UTF-8 is dead-lettered on the scores topic and in a request; no model runner dies of it."""
    p, o = chain.produce_raw(chain.topics.scores, b'{"model": "m1", "model_version": "\xff\xfe"}', b"s", partition=0)
    _dead_letter_for(chain, chain.topics.scores, p, o)
    pids = {name: chain.pid(name) for name in chain.models.values()}
    p, o = chain.produce_raw(chain.topics.requests, b'{"request_id": "utf", "features": {"x": "\xff\xfe"}}', b"utf")
    _dead_letter_for(chain, chain.topics.requests, p, o)
    answered_by_the_rule(chain.ask(f"after-utf-{time.monotonic_ns()}", {}))
    assert {name: chain.pid(name) for name in chain.models.values()} == pids  # no model runner died


def test_a_batch_that_fails_is_scored_request_by_request_so_one_bad_request_costs_only_itself(broker, tmp_path):
    """A vectorised model fails a whole batch for one bad request: the runner scores that batch again one
    by one, so the bad request gets its error and every other request its score, each exactly once."""
    with System(settings_for(broker), tmp_path, partitions=2) as s:
        ids = [f"b{i}" for i in range(30)]
        # sent before the model starts: its first poll takes them all, as one batch
        s.send([(rid, {"mb_fail": True} if rid == "b17" else {"mb_score": i / 100}) for i, rid in enumerate(ids)])
        s.wait_ready(s.start_models(scripted_spec(tmp_path, "mb", 0.5, batched=True)))

        def all_scored() -> dict | None:
            got: dict[str, list] = {}
            for message in s.read_topic(s.topics.scores):
                for score in decode_score_batch(message.value()).scores:
                    got.setdefault(score.request_id, []).append(score)
            return got if set(ids) <= set(got) else None

        got = wait_until(all_scored, "the batched model scored every request", timeout=60)
        assert {rid: len(scores) for rid, scores in got.items()} == dict.fromkeys(ids, 1)  # each exactly once
        (bad,) = got["b17"]
        assert bad.score is None and "mb was told to fail" in (bad.error or "")
        assert all(got[rid][0].score == i / 100 and got[rid][0].error is None
                   for i, rid in enumerate(ids) if rid != "b17")
