"""Crashes, restarts and rebalances: no request lost, none answered twice."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from rendezvous.kernel.admin import create_topic, delete_topic, end_offsets, topic_id
from rendezvous.kernel.errors import TopicError
from rendezvous.kernel.kafka import commit_stamp
from rendezvous.kernel.settings import DEFAULT_SESSION_TIMEOUT_MS
from rendezvous.kernel.wire import Request, decode_score_batch, encode
from tests.conftest import CHAIN_POLICY, System, scripted_spec, wait_until, write_policy
from tests.rule import Chain, check

pytestmark = pytest.mark.slow
CHAIN = Chain((("m3", 30), ("m2", 30), ("m1", None)), sla_ms=100)  # CHAIN_POLICY


def start(system: System, workers: int = 1) -> list[str]:
    d = system.directory
    models = system.start_chain_models()
    system.policy_path = write_policy(d, CHAIN_POLICY)
    names = system.start_workers(system.policy_path, workers)
    system.wait_ready(models + names)
    system.warm_up()
    return names


def assert_exactly_once(system: System, ids: list[str], timeout: float = 60.0) -> dict[str, list]:
    results = system.results_for(ids, timeout)
    counts = Counter(len(r) for r in results.values())
    twice = [[(x.worker, round(x.decided_ms), x.detail[:90]) for x in r]
             for r in results.values() if len(r) > 1][:3]
    assert counts == Counter({1: len(ids)}), f"results per request: {dict(counts)}; answered twice, e.g.: {twice}"
    return results


def test_a_worker_killed_mid_stream_and_restarted_loses_nothing_and_answers_nothing_twice(system: System):
    [worker] = start(system)
    ids = [f"kill-{i}" for i in range(600)]
    sender = system.send_in_background([(rid, {}) for rid in ids], rate=100)
    assert system.collector.wait_for(ids[:250], 30), "the first requests were not answered"  # well into the stream
    system.signal(worker, signal.SIGKILL)
    system.runtime.stop([worker], timeout=5)
    [replacement] = system.start_workers(system.policy_path)
    sender.join()
    results = assert_exactly_once(system, ids, timeout=90)
    answered_by = Counter(r[0].worker for r in results.values())
    assert len(answered_by) == 2, answered_by  # both the killed worker and its replacement answered some
    for [result] in results.values():
        check(result, CHAIN)
    # by the replacement's own record: it answered requests that were due while no worker ran
    overdue = [r[0] for r in results.values() if r[0].decided_ms - r[0].due_ms > 1000]
    assert overdue, "the kill should have left requests in flight for the replacement"


def test_two_workers_share_the_partitions(system: System, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WEB_PORT", "6099")  # left in a shell: Faust would give it precedence over --web-port
    workers = start(system, workers=2)
    assert len({system.url(w) for w in workers}) == 2

    def split() -> list[set[int]] | None:  # once the second rebalance settles: each owns some, together all
        owned = [set(system.stats(w)["partitions"]) for w in workers]
        return owned if owned[0] and owned[1] and not owned[0] & owned[1] and owned[0] | owned[1] == {0, 1, 2, 3} else None
    wait_until(split, "the two workers split the four partitions")
    ids = [f"pair-{i}" for i in range(400)]
    system.send([(rid, {}) for rid in ids], rate=200)
    results = assert_exactly_once(system, ids)
    by_worker = Counter(r[0].worker for r in results.values())
    assert len(by_worker) == 2 and min(by_worker.values()) > 50, by_worker


def test_a_worker_stopped_with_sigterm_hands_over_without_loss(system: System):
    workers = start(system, workers=2)
    ids = [f"term-{i}" for i in range(400)]
    sender = system.send_in_background([(rid, {}) for rid in ids], rate=100)
    assert system.collector.wait_for(ids[:200], 30), "the first requests were not answered"
    leaving = system.runtime.supervisor.get(workers[0])
    system.runtime.stop([workers[0]], timeout=30)  # SIGTERM: drain in-flight requests, commit, leave
    assert leaving.process.returncode == 0, f"exit code {leaving.process.returncode}: not a clean stop on SIGTERM"
    sender.join()
    results = assert_exactly_once(system, ids, timeout=60)
    assert len({r[0].worker for r in results.values()}) == 2  # the leaver answered some, the other the rest
    for [result] in results.values():
        check(result, CHAIN)


def _consumes_again(system: System, model: str, what: str, timeout: float = 10.0) -> float:
    """Send a probe; seconds until ``model`` scored it (fails past ``timeout``)."""
    rid = f"probe-{time.monotonic_ns()}"
    started = time.monotonic()
    system.send([(rid, {})])
    wait_until(lambda: model in system.scored_by(rid), f"{model} scores again after {what}", timeout)
    return time.monotonic() - started


def test_a_model_always_consumes_again_after_restarts_and_rescaling(system: System, broker):
    """Its consumer group never stays stuck: 4 stops (clean and killed) and restarts, then 1 -> 3 -> 1 -> 0 -> 2
    replicas; after each, the model scores a new request within 10 s of being started."""
    if broker.engine == "tansu":
        pytest.skip("measured: on Tansu a model killed once did not consume again within 10 s of its restart")
    spec = scripted_spec(system.directory, "m1", 0.1)
    names = system.start_models(spec)
    system.wait_ready(names)
    times = [_consumes_again(system, "m1", "its first start", timeout=30)]
    for cycle in range(4):  # half clean, half killed; 20 took 75 s of the suite's 10 minutes, 10 took 44 s
        if cycle % 2:  # killed: the group learns of it only when its session times out
            system.signal(names[0], signal.SIGKILL)
        system.runtime.stop_model("m1")
        names = system.start_models(spec)
        times.append(_consumes_again(system, "m1", f"restart {cycle + 1}"))
    while_none = f"while-none-{time.monotonic_ns()}"
    for replicas in (3, 1, 0, 2):
        system.runtime.deploy(spec, replicas)
        if replicas == 0:
            system.send([(while_none, {})])
            continue
        times.append(_consumes_again(system, "m1", f"scaling to {replicas}"))
    # sent while no replica ran: scored once one did (its partition may be another replica's, one that
    # starts consuming a moment after the replica that scored the last probe)
    wait_until(lambda: "m1" in system.scored_by(while_none), "the request sent while no replica ran scored")
    print(f"seconds to consume again: max {max(times):.2f}, each {[round(t, 2) for t in times]}")


def test_a_killed_worker_is_covered_by_its_peer_long_before_the_group_notices(system: System):
    """Two workers; one SIGKILLed under traffic and not restarted. Its peer's standby answers its partitions
    at once, so no request waits for the group's session timeout and the rebalance after it; exactly once."""
    victim, survivor = start(system, workers=2)
    wait_until(lambda: all(system.stats(w)["partitions"] and system.stats(w)["standby"]["peers"]
                           for w in (victim, survivor)), "the two workers split the partitions and linked")
    victim_id = system.stats(victim)["worker"]
    ids = [f"cover-{i}" for i in range(600)]
    sender = system.send_in_background([(rid, {}) for rid in ids], rate=100)
    assert system.collector.wait_for(ids[:200], 30), "the first requests were not answered"
    system.signal(victim, signal.SIGKILL)
    system.runtime.stop([victim], timeout=5)  # not restarted: the survivor alone
    sender.join()
    results = assert_exactly_once(system, ids, timeout=90)
    for [result] in results.values():
        check(result, CHAIN)
    standby = system.stats(survivor)["standby"]
    assert standby["lost"] == [victim_id] and standby["takeovers"], standby
    covered = [r for [r] in results.values() if r.detail.startswith("answered by a standby")]
    assert covered and all(r.worker != victim_id for r in covered)
    # by each worker's own record: no request waited for the session timeout (6 s) and the rebalance
    worst = max(r.latency_ms for [r] in results.values())
    assert worst < DEFAULT_SESSION_TIMEOUT_MS / 3, f"a request waited {worst:.0f} ms: the group, not the standby"


def test_a_topic_made_again_is_read_from_its_start_even_where_it_has_grown_past_a_stale_commit(system: System, broker):
    """The worker's and the models' commits carry the id of the topic they were read from. The requests topic is
    made again and a stale commit of the old log's offsets lands after that (a reader that still held them); the
    new log grows past those offsets before the worker and the model take over. Offsets alone cannot tell; the
    stamp can: every request of the new log is scored, and answered exactly once."""
    if broker.engine == "tansu":
        pytest.skip("Tansu 0.6 gives every topic the null id: only a committed offset past the end tells a new log")
    spec = scripted_spec(system.directory, "m1", 0.1)
    [model] = system.start_models(spec)
    system.policy_path = write_policy(system.directory, CHAIN_POLICY)  # m1 alone: its stage, or the default
    [worker] = system.start_workers(system.policy_path)
    system.wait_ready([model, worker])
    before = [f"before-{i}" for i in range(40)]
    system.send([(rid, {}) for rid in before])
    assert_exactly_once(system, before)
    wait_until(lambda: _scored_by(system, "m1", before) == set(before), "m1 scored every request")
    system.runtime.stop([worker, model], timeout=30)  # SIGTERM: each commits what it finished
    requests = system.topics.requests
    groups = {"the worker": system.topics.namespace, "the model": system.topics.group("model.m1.1")}
    stale, old_id = {}, topic_id(AdminClient(system.kafka.admin()), requests)
    assert old_id is not None
    for who, group in groups.items():
        reader = Consumer(system.kafka.consumer(group, **{"enable.auto.commit": False}))
        stale[who] = reader.committed([TopicPartition(requests, p) for p in range(system.partitions)], timeout=10)
        reader.close()
        assert all(tp.offset > 0 for tp in stale[who]), f"{who}: {stale[who]}"
        assert {commit_stamp(tp) for tp in stale[who]} == {old_id}, f"{who}'s commits do not name the log they read"

    assert delete_topic(system.kafka, requests) is None

    def made_again() -> bool:  # Kafka deletes a topic in the background: made again once it is gone
        try:
            create_topic(system.kafka, requests, system.partitions)
        except TopicError:
            return False
        return topic_id(AdminClient(system.kafka.admin()), requests) not in (None, old_id)
    wait_until(made_again, "the requests topic made again", timeout=30, every=0.5)
    for who, group in groups.items():  # the stale commits, stamped with the old log's id
        writer = Consumer(system.kafka.consumer(group, **{"enable.auto.commit": False}))
        writer.commit(offsets=stale[who], asynchronous=False)
        writer.close()
    after = [f"after-{i}" for i in range(200)]
    client = Producer(system.kafka.producer())  # one made for the new topic
    for rid in after:
        client.produce(requests, encode(Request(rid, {})), rid.encode())
    assert client.flush(15) == 0
    ends = end_offsets(system.kafka, requests, system.partitions)
    assert all(ends[tp.partition] > tp.offset for tps in stale.values() for tp in tps), f"must outgrow {stale}: {ends}"
    system.start_models(spec)
    system.start_workers(system.policy_path)
    assert_exactly_once(system, after, timeout=30)
    wait_until(lambda: _scored_by(system, "m1", after) == set(after), "m1 scored every request of the new log",
               timeout=30, every=1)


def _scored_by(system: System, model: str, ids: list[str]) -> set[str]:
    wanted, scored = set(ids), set()
    for message in system.read_topic(system.topics.scores):
        batch = decode_score_batch(message.value())
        if batch.model == model:
            scored |= {s.request_id for s in batch.scores} & wanted
    return scored
