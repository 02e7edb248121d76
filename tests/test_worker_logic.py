"""The worker's own logic, driven through the Kafka layer's interface with an in-memory broker.

Fast and exact: the clock is injected, so "decided at its deadline" is an equality,
and what the worker acknowledges is read from the group's committed offsets. Each
guarantee here also has a live test against a real broker (test_pipeline,
test_recovery, test_faults); these pin down the logic behind it.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from confluent_kafka import KafkaError
from faust.types import TP
from prometheus_client import generate_latest

from policies import load_policy_text
from policies.record import POLICY_KEY
from rendezvous.kernel.clock import FixedClock
from rendezvous.kernel.kafka import log_stamp
from rendezvous.kernel.memory import MemoryBroker, MemoryEvent
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import PROBE, REPLY_TO
from rendezvous.kernel.trust import StackSecret, signed_headers
from rendezvous.kernel.wire import DLQ_REASON, Request, Score, ScoreBatch, decode_result, encode
from rendezvous.service.control import ControlFeed
from rendezvous.service.policies import PolicyStore, policy_record
from rendezvous.service.settings import ServiceSettings
from rendezvous.service.worker import RendezvousWorker
from tests.conftest import wait_until

START_MS = 1_700_000_000_000.0
POLICY = """\
name: p
version: 1
sla_ms: 100
default: {score: 0.5}
routing:
  strategy: fixed
  chain:
    - {model: m1, wait_ms: 20}
    - {model: m2}
"""


class Rig:
    """One worker on an in-memory broker with two partitions, and a clock that moves when told."""

    def __init__(self, secret: StackSecret | None = None, **settings: object) -> None:
        self.clock = FixedClock(START_MS)
        self.broker = MemoryBroker(self.clock, partitions=2)
        self.settings = ServiceSettings(KafkaSettings("memory:0"), worker_id="w1", web_port=0, secret=secret, standby=False,
                                        **settings)  # type: ignore[arg-type]
        self.topics = self.settings.topics
        store = PolicyStore(random.Random(0), clock=self.clock)
        store.adopt(load_policy_text(POLICY), self.clock(), "test")
        feed = ControlFeed(self.settings.kafka, self.topics, clients=self.broker)  # never started: nothing to follow
        self.worker = RendezvousWorker(self.settings, store, feed, clients=self.broker, clock=self.clock)
        self.worker.partitions.owned = {0, 1}

    def event(self, topic: str, offset: int, partition: int = 0) -> MemoryEvent:
        return self.broker.event(topic, partition, offset, group=self.settings.app_id)

    def request(self, request_id: str, partition: int = 0, value: bytes | None = None,
                headers: list[tuple[str, bytes]] | None = None) -> MemoryEvent:
        """A client writes a request now; the worker reads it."""
        if value is None:
            value = encode(Request(request_id, {"x": 1.0}))
        m = self.broker.append(self.topics.requests, value, request_id.encode(), partition, headers)
        event = self.event(self.topics.requests, m.offset(), partition)
        self.worker.on_request_event(event)
        return event

    def scores(self, model: str, scored: dict[str, float], partition: int = 0,
               headers: list[tuple[str, bytes]] | None = None) -> MemoryEvent:
        """A runner of ``model`` writes one score record now; the worker reads it."""
        now = self.clock()
        batch = ScoreBatch(model, "1", "host", [Score(r, now, now, now, s) for r, s in scored.items()])
        value = encode(batch)
        if headers is None and self.settings.secret is not None:
            headers = signed_headers(self.settings.secret.model_key(model), value)
        m = self.broker.append(self.topics.scores, value, None, partition, headers)
        event = self.event(self.topics.scores, m.offset(), partition)
        self.worker.on_score_event(event)
        return event

    def results(self) -> list:
        return [decode_result(m.value()) for m in self.broker.records(self.topics.results)]

    def committed(self, topic: str, partition: int = 0) -> int | None:
        return self.broker.committed_offset(self.settings.app_id, topic, partition)


@pytest.fixture
def rig():
    return Rig()


def test_a_request_is_acknowledged_only_once_its_result_is_delivered(rig):
    rig.request("r1")
    rig.scores("m1", {"r1": 0.9})
    assert rig.results() == [] and rig.committed(rig.topics.requests) is None  # decided, not yet written
    rig.worker.housekeep()  # serves the delivery report
    (result,) = rig.results()
    assert (result.request_id, result.model, result.reason, result.score) == ("r1", "m1", "preferred", 0.9)
    assert rig.committed(rig.topics.requests) == 1 and rig.committed(rig.topics.scores) == 1


def test_a_result_that_cannot_be_written_is_never_acknowledged_and_stops_the_worker(rig):
    rig.broker.refuse(rig.topics.results, KafkaError._MSG_TIMED_OUT)
    rig.request("r1")
    rig.scores("m1", {"r1": 0.9})
    rig.worker.housekeep()
    assert rig.committed(rig.topics.requests) is None  # a restart re-reads it
    assert rig.worker.fatal_error and "could not write a result" in rig.worker.fatal_error


def test_a_score_record_is_acknowledged_when_every_request_it_scored_is_answered(rig):
    rig.request("r1")
    rig.request("r2")
    rig.scores("m2", {"r1": 0.1, "r2": 0.2})  # m1 is preferred: both wait for it
    rig.scores("m1", {"r1": 0.7})
    rig.worker.housekeep()
    assert [r.request_id for r in rig.results()] == ["r1"]
    assert rig.committed(rig.topics.scores) is None  # m2's record still scores r2, unanswered
    rig.clock.advance(20)  # m1's wait is over: r2 falls back to m2
    rig.worker.housekeep()
    rig.worker.housekeep()
    assert [(r.request_id, r.model, r.reason) for r in rig.results()] == [("r1", "m1", "preferred"),
                                                                          ("r2", "m2", "fallback")]
    assert rig.committed(rig.topics.scores) == 2 and rig.committed(rig.topics.requests) == 2


def test_a_request_no_model_answers_gets_the_default_exactly_at_its_guarded_deadline(rig):
    rig.request("r1")
    sla, guard = 100.0, rig.settings.sla_guard_ms
    rig.clock.advance(sla - guard - 0.001)
    rig.worker.housekeep()
    assert rig.results() == []
    rig.clock.advance(0.001)
    rig.worker.housekeep()
    rig.worker.housekeep()
    (result,) = rig.results()
    assert (result.reason, result.score) == ("default", 0.5)
    assert result.decided_ms == result.due_ms == START_MS + sla - guard  # the worker's own record


def test_the_timer_is_armed_for_the_earliest_deadline(rig):
    async def scenario() -> None:
        rig.request("r1")
        assert rig.worker._timer_at == START_MS + 20  # m1's wait
        rig.clock.advance(5)
        rig.request("r2")
        assert rig.worker._timer_at == START_MS + 20  # a later deadline does not move it
        rig.clock.advance(15)
        rig.worker._on_timer()  # what the loop calls at the deadline
        assert rig.worker._timer_at == START_MS + 25  # re-armed for r2

    asyncio.run(scenario())


def test_a_malformed_request_is_dead_lettered_with_its_reason_and_acknowledged_once_parked(rig):
    rig.request("bad", value=b'{"request_id": "bad", "features": {"x": 1e999}}')
    rig.request("utf", value=b'{"request_id": "utf", "features": {"x": "\xff"}}')
    assert rig.committed(rig.topics.requests) is None
    rig.worker.housekeep()
    letters = rig.broker.records(rig.topics.deadletter)
    assert len(letters) == 2 and rig.results() == []
    assert all(dict(m.headers())[DLQ_REASON] for m in letters)
    assert letters[0].value() == b'{"request_id": "bad", "features": {"x": 1e999}}'  # the original bytes
    assert rig.committed(rig.topics.requests) == 2
    assert rig.worker.writer.deadletters["invalid_request"] == 2


def test_a_forged_score_is_refused_counted_and_never_answers():
    rig = Rig(secret=StackSecret(b"0123456789abcdef0123456789abcdef"))
    rig.request("r1")
    rig.scores("m1", {"r1": 0.99}, headers=[])  # not signed
    rig.scores("m1", {"r1": 0.99}, headers=signed_headers(rig.settings.secret.model_key("m2"),  # type: ignore[union-attr]
                                                          b"x"))
    rig.worker.housekeep()
    assert rig.results() == [] and rig.worker.forged_scores == 2
    assert rig.worker.writer.deadletters["forged_score"] == 2
    rig.scores("m1", {"r1": 0.4})  # signed with m1's key
    rig.worker.housekeep()
    assert [(r.model, r.score) for r in rig.results()] == [("m1", 0.4)]


def test_a_probe_is_answered_at_once_on_the_gateways_reply_topic_only(rig):
    reply = rig.topics.replies("g1")
    rig.request("p1", headers=[(PROBE, b"1"), (REPLY_TO, reply.encode())])
    rig.worker.housekeep()
    assert rig.results() == [] and [m.key() for m in rig.broker.records(reply)] == [b"p1"]
    assert rig.committed(rig.topics.requests) == 1 and rig.worker.probes_answered == 1


def test_a_reply_topic_that_is_not_ours_is_ignored_and_counted(rig):
    rig.request("r1", headers=[(REPLY_TO, b"someone.elses.topic")])
    rig.scores("m1", {"r1": 0.9})
    rig.worker.housekeep()
    assert len(rig.results()) == 1 and rig.broker.records("someone.elses.topic") == []
    assert rig.worker.ignored_reply_to == 1


def test_a_reply_copy_goes_to_the_gateway_that_asked(rig):
    reply = rig.topics.replies("g1")
    rig.request("r1", headers=[(REPLY_TO, reply.encode())])
    rig.scores("m1", {"r1": 0.9})
    rig.worker.housekeep()
    assert [decode_result(m.value()).request_id for m in rig.broker.records(reply)] == ["r1"]


def test_a_new_owner_waits_for_recovery_and_answers_only_what_was_not_answered():
    rig = Rig(outcome_rebuild_s=0.0)
    broker, t = rig.broker, rig.topics
    for rid in ("done", "answered", "open"):
        broker.append(t.requests, encode(Request(rid, {"x": 1.0})), rid.encode(), 0)
    for rid in ("done", "answered"):  # the previous owner's results
        broker.append(t.results, b"{}", rid.encode(), 0)
    # ... and its last commit: it died before the delivery report of "answered" acknowledged it
    broker.commit(rig.settings.app_id, t.requests, 0, 1)
    rig.worker.partitions.owned = set()

    async def scenario() -> None:
        assigning = asyncio.ensure_future(rig.worker._on_assigned(None, {TP(t.requests, 0)}))
        await asyncio.sleep(0)
        for offset in (1, 2):  # Faust delivers the re-read requests while recovery still runs: they wait
            rig.worker.on_request_event(rig.event(t.requests, offset))
        assert rig.worker.router.pending_count == 0
        await asyncio.wait_for(assigning, 10)

    asyncio.run(scenario())
    assert rig.worker.ready and rig.worker.owned == {0}
    assert rig.worker.router.pending_count == 1  # "open"; "answered" is not answered again
    assert rig.worker.router.stats.duplicate_requests == 1
    rig.scores("m1", {"open": 0.3})
    rig.worker.housekeep()
    assert [m.key() for m in broker.records(t.results)] == [b"done", b"answered", b"open"]
    assert rig.committed(t.requests) == 3


def test_a_partition_revoked_during_recovery_drops_what_waited(rig):
    rig.worker.partitions.owned = set()

    async def scenario() -> None:
        assigning = asyncio.ensure_future(rig.worker._on_assigned(None, {TP(rig.topics.requests, 1)}))
        await asyncio.sleep(0)
        rig.request("r1", partition=1)
        await rig.worker._on_revoked(None, {TP(rig.topics.requests, 1)})
        await asyncio.wait_for(assigning, 10)

    asyncio.run(scenario())
    assert rig.worker.router.pending_count == 0 and rig.results() == []  # its next owner re-reads it


def test_re_read_requests_wait_for_their_re_read_scores():
    rig = Rig()
    broker, t = rig.broker, rig.topics
    broker.append(t.requests, encode(Request("r1", {"x": 1.0})), b"r1", 0)
    batch = ScoreBatch("m2", "1", "h", [Score("r1", 0, 0, 0, 0.2)])
    broker.append(t.scores, encode(batch), None, 0)
    rig.worker.partitions.owned = set()

    async def scenario() -> None:
        await asyncio.wait_for(rig.worker._on_assigned(None, {TP(t.requests, 0)}), 10)

    asyncio.run(scenario())
    assert rig.worker.partitions.catch_up == {0: 1}  # scores to be read up to offset 1
    rig.clock.advance(200)  # long past every deadline: still held, its scores are not read yet
    rig.worker.on_request_event(rig.event(t.requests, 0))
    rig.worker.housekeep()
    assert rig.results() == []
    rig.worker.on_score_event(rig.event(t.scores, 0))  # caught up: decided with the score it had
    rig.worker.housekeep()
    rig.worker.housekeep()
    assert [(r.request_id, r.model) for r in rig.results()] == [("r1", "m2")]


def test_a_new_log_is_read_again_from_its_start():
    """The broker lost its data: the group's committed offsets lie past the ends of the new log's partitions."""
    rig = Rig()
    broker, t = rig.broker, rig.topics
    broker.append(t.requests, encode(Request("new", {"x": 1.0})), b"new", 0)
    broker.commit(rig.settings.app_id, t.requests, 0, 51)
    broker.commit(rig.settings.app_id, t.scores, 0, 40)
    rewound = []

    async def rewind(topic: str, partition: int, offset: int) -> None:
        rewound.append((topic, partition, offset))

    rig.worker.partitions.rewind = rewind
    rig.worker.partitions.owned = set()

    async def scenario() -> None:
        assigning = asyncio.ensure_future(rig.worker._on_assigned(None, {TP(t.requests, 0)}))
        await asyncio.sleep(0)
        rig.worker.on_request_event(rig.event(t.requests, 0))  # delivered before the rewind: it comes again
        await asyncio.wait_for(assigning, 10)

    asyncio.run(scenario())
    assert rewound == [(t.requests, 0, 0), (t.scores, 0, 0)]
    assert rig.worker.router.pending_count == 0
    rig.worker.on_request_event(rig.event(t.requests, 0))  # the rewound stream delivers it again: once
    assert rig.worker.router.pending_count == 1 and rig.worker.router.stats.duplicate_requests == 0


def test_a_log_made_again_is_read_again_even_where_it_has_grown_past_the_committed_offset():
    """A worker that still held the old log's offsets committed them after the topic was made again, and the new
    log has grown past them: offsets alone cannot tell, the commit's stamp (the old topic id) does."""
    rig = Rig()
    broker, t, group = rig.broker, rig.topics, rig.settings.app_id
    for topic in (t.requests, t.scores):
        broker.append(topic, b"old", b"old", 0)
        old_id = broker.topic_ids(rig.settings.kafka, [topic])[topic]
        new_id = broker.make_again(topic)
        assert new_id != old_id
        broker.commit(group, topic, 0, 2, log_stamp(old_id))  # the stale commit, stamped with the old log's id
    for i in range(5):  # the new log, grown past offset 2 (the requests below it would be skipped)
        broker.append(t.requests, encode(Request(f"new-{i}", {"x": 1.0})), f"new-{i}".encode(), 0)
    rewound = []

    async def rewind(topic: str, partition: int, offset: int) -> None:
        assert rig.worker.app.log_ids.get(topic) != new_ids[topic], "stamped with the new id before the rewind"
        rewound.append((topic, partition, offset))

    new_ids = broker.topic_ids(rig.settings.kafka, [t.requests, t.scores])
    rig.worker.partitions.rewind = rewind
    rig.worker.partitions.owned = set()
    asyncio.run(asyncio.wait_for(rig.worker._on_assigned(None, {TP(t.requests, 0)}), 10))
    assert rewound == [(t.requests, 0, 0), (t.scores, 0, 0)]
    assert rig.worker.app.log_ids == new_ids  # what its commits carry from now on


def test_a_commit_stamped_with_the_topics_own_id_is_trusted():
    rig = Rig()
    broker, t, group = rig.broker, rig.topics, rig.settings.app_id
    for i in range(5):
        broker.append(t.requests, encode(Request(f"r-{i}", {"x": 1.0})), f"r-{i}".encode(), 0)
    ids = broker.topic_ids(rig.settings.kafka, [t.requests])
    broker.commit(group, t.requests, 0, 3, log_stamp(ids[t.requests]))
    rewound = []

    async def rewind(topic: str, partition: int, offset: int) -> None:
        rewound.append((topic, partition, offset))

    rig.worker.partitions.rewind = rewind
    rig.worker.partitions.owned = set()
    asyncio.run(asyncio.wait_for(rig.worker._on_assigned(None, {TP(t.requests, 0)}), 10))
    assert rewound == []


def test_metrics_are_served_before_the_consumer_starts(rig):
    rig.request("r1")
    rig.scores("m1", {"r1": 0.9})
    rig.worker.housekeep()
    text = generate_latest(rig.worker.metrics.registry).decode()
    assert 'rendezvous_results_total{model="m1",reason="preferred"} 1.0' in text
    assert "rendezvous_consumer_lag_records" in text


def test_a_live_policy_naming_a_model_nobody_runs_is_refused_unless_applied_with_allow_missing(rig):
    feed = rig.worker.control.feed
    feed.read_policies(timeout=1)  # what a worker reads at start; then it follows the topic
    feed.start()
    try:
        rig.request("r1")
        rig.scores("m1", {"r1": 0.9})
        rig.scores("m2", {"r1": 0.2})  # m1 and m2 run: they score
        rig.worker.housekeep()
        typo = load_policy_text(POLICY.replace("version: 1", "version: 2").replace("{model: m2}", "{model: m22}"))
        store = rig.worker.control.store

        def offered(value: bytes) -> None:
            before = (store.doc.version, store.refused)
            rig.broker.append(rig.topics.policies, value, POLICY_KEY, 0)
            # until the record is taken in (or refused); each try runs a housekeeping round first
            wait_until(lambda: rig.worker.housekeep() or (store.doc.version, store.refused) != before,
                       "the worker took the policy record in", timeout=5, every=0.01)

        offered(policy_record(typo, reason="a typo"))
        assert (store.doc.version, store.refused) == (1, 1)  # refused, naming the field's model; v1 stays
        offered(policy_record(typo, reason="deployed next", allow_missing=True))
        assert store.doc.version == 2 and rig.worker.router.policy.version == 2
    finally:
        feed.stop()
