"""The router driven by a simulated clock: joins, deadlines, duplicates, bounds, tokens."""

from __future__ import annotations

import heapq
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rendezvous.kernel.wire import Score
from rendezvous.routing.plan import due_ms
from rendezvous.routing.policy import FixedChain
from rendezvous.routing.router import Router, RouterLimits

POLICY = FixedChain("p", 7, [("m3", 40), ("m2", 30), ("m1", None)], sla_ms=100, default_score=0.5)


def score(rid: str, value: float = 0.9, error: str | None = None) -> Score:
    return Score(rid, 0.0, 0.0, 0.0, None if error else value, error)


class Tokens:
    """Counts releases, as the adapter's acknowledgements would."""

    def __init__(self) -> None:
        self.released: Counter = Counter()

    def release(self, step) -> None:
        for t in step.released:
            self.released[t] += 1


def test_preferred_answer_is_immediate():
    r = Router(POLICY)
    assert r.on_request("a", 0, 1000, "req-a", 1000).decisions == []
    step = r.on_scores("m3", "v1", [score("a")], "b1", 1012)
    [d] = step.decisions
    assert (d.choice.model, d.choice.reason, d.latency_ms) == ("m3", "preferred", 12)
    assert d.pending.token == "req-a" and d.pending.score_tokens == ["b1"]
    assert r.pending_count == 0


def test_fallback_waits_for_its_stage():
    r = Router(POLICY)
    r.on_request("a", 0, 1000, "req", 1000)
    assert r.on_scores("m2", "v", [score("a")], "b", 1005).decisions == []
    assert r.next_wake_ms() == 1040
    assert r.on_tick(1039).decisions == []
    [d] = r.on_tick(1040).decisions
    assert (d.choice.model, d.choice.reason) == ("m2", "fallback")


def test_default_at_sla_and_never_later():
    r = Router(POLICY)
    r.on_request("a", 0, 1000, "req", 1000)
    for t in (1040, 1070):
        assert r.on_tick(t).decisions == []
    [d] = r.on_tick(1100).decisions
    assert (d.choice.model, d.choice.reason, d.latency_ms) == (None, "default", 100)


def test_request_timestamp_in_the_future_does_not_stretch_the_sla():
    r = Router(POLICY)
    r.on_request("a", 0, record_ms=5000, token="req", now_ms=1000)  # producer clock 4 s ahead
    [d] = r.on_tick(1100).decisions
    assert d.choice.reason == "default"


def test_overdue_request_is_decided_on_arrival_saying_it_came_late():
    r = Router(POLICY)
    [d] = r.on_request("a", 0, 1000, "req", now_ms=1500).decisions
    assert d.choice.reason == "default" and d.latency_ms == 500
    assert d.detail.startswith("late intake: the request reached the worker 500 ms after it was made, past its 100 ms")
    r.on_request("b", 0, 2000, "req", now_ms=2010)  # in time: no such note
    [d] = r.on_scores("m3", "v", [score("b")], "s", 2020).decisions
    assert not d.detail.startswith("late intake")


def test_scores_before_their_request_are_kept_and_joined():
    r = Router(POLICY)
    step = r.on_scores("m3", "v", [score("a")], "b", 999)
    assert step.kept == 1 and step.decisions == [] and r.orphan_count == 1
    [d] = r.on_request("a", 0, 1000, "req", 1001).decisions
    assert d.choice.model == "m3" and d.pending.score_tokens == ["b"]
    assert r.orphan_count == 0


def test_orphans_expire_as_unknown_requests():
    r = Router(POLICY, RouterLimits(orphan_ttl_ms=500))
    r.on_scores("m3", "v", [score("ghost")], "b", 1000)
    assert r.on_tick(1499).released == []
    assert r.on_tick(1500).released == ["b"]
    assert r.stats.dropped["unknown_request", "m3"] == 1


def test_orphans_are_bounded():
    r = Router(POLICY, RouterLimits(orphan_max=3))
    released = []
    for i in range(5):
        released += r.on_scores("m3", "v", [score(f"r{i}")], f"b{i}", 1000 + i).released
    assert r.orphan_count == 3 and released == ["b0", "b1"]


def test_late_and_duplicate_scores_are_counted_not_used():
    r = Router(POLICY)
    r.on_request("a", 0, 1000, "req", 1000)
    r.on_scores("m1", "v", [score("a")], "b1", 1010)
    assert r.on_scores("m1", "v", [score("a")], "b2", 1011).kept == 0  # duplicate while pending
    r.on_scores("m3", "v", [score("a")], "b3", 1020)  # decides
    late = r.on_scores("m2", "v", [score("a")], "b4", 1030)
    dup = r.on_scores("m3", "v", [score("a")], "b5", 1031)
    assert late.kept == dup.kept == 0 and late.decisions == dup.decisions == []
    assert r.stats.dropped == Counter({("duplicate", "m1"): 1, ("late", "m2"): 1, ("duplicate", "m3"): 1})


def test_scores_from_models_the_policy_does_not_name_are_dropped():
    r = Router(POLICY)
    r.on_request("a", 0, 1000, "req", 1000)
    r.on_request("done", 0, 1000, "req2", 1000)
    r.on_scores("m3", "v", [score("done")], "b0", 1001)
    assert r.on_scores("intruder", "v", [score("a"), score("zzz"), score("done")], "b", 1001).kept == 0
    assert r.stats.dropped["unknown_model", "other"] == 3  # any name: counted under one, never a label of its own


def test_failed_model_opens_the_next_stage_at_once():
    r = Router(POLICY)
    r.on_request("a", 0, 1000, "req", 1000)
    assert r.on_scores("m2", "v", [score("a")], "b1", 1002).decisions == []
    [d] = r.on_scores("m3", "v", [score("a", error="boom")], "b2", 1003).decisions
    assert (d.choice.model, d.choice.reason) == ("m2", "fallback")
    assert r.stats.model_errors["m3"] == 1


def test_redelivered_request_is_not_answered_twice():
    r = Router(POLICY)
    r.on_request("a", 0, 1000, "req1", 1000)
    r.on_scores("m3", "v", [score("a")], "b", 1001)
    step = r.on_request("a", 0, 1000, "req2", 1002)
    assert step.decisions == [] and step.released == ["req2"]
    assert r.stats.duplicate_requests == 1


def test_ids_answered_before_a_restart_are_not_answered_again():
    r = Router(POLICY)
    r.mark_answered(["a"], 1000)
    step = r.on_request("a", 0, 1000, "req", 1001)
    assert step.decisions == [] and step.released == ["req"]


def test_held_partition_defers_fallbacks_until_released():
    r = Router(POLICY)
    r.hold(2)
    r.on_request("a", 2, 1000, "req", 5000)  # re-read long after its SLA
    r.on_request("b", 3, 1000, "req-b", 5000)  # other partitions are not held
    r.on_scores("m1", "v", [score("a")], "s1", 5001)
    assert r.on_tick(5002).decisions == []
    [d] = r.on_scores("m3", "v", [score("a")], "s2", 5003).decisions  # preferred: cannot get better
    assert d.choice.model == "m3"
    r.on_request("c", 2, 1000, "req-c", 5004)
    r.on_scores("m2", "v", [score("c")], "s3", 5005)
    [d] = r.release(2, 5006).decisions
    assert (d.pending.request_id, d.choice.model) == ("c", "m2")


def test_live_requests_of_a_held_partition_follow_their_clock():
    r = Router(POLICY)
    r.hold(2)
    r.on_request("live", 2, 5000, "req", 5001)  # seen in time: not a re-read
    r.on_scores("m2", "v", [score("live")], "s", 5010)
    [d] = r.on_tick(5040).decisions
    assert (d.choice.model, d.latency_ms) == ("m2", 40)


def test_new_policy_applies_to_new_requests_only():
    r = Router(POLICY)
    r.on_request("old", 0, 1000, "r1", 1000)
    r.set_policy(FixedChain("p", 8, [("m1", None)], sla_ms=50))
    r.on_request("new", 0, 1000, "r2", 1000)
    decided = {d.pending.request_id: d for d in r.on_scores("m1", "v", [score("old"), score("new")], "b", 1001).decisions}
    assert set(decided) == {"new"} and decided["new"].pending.plan.policy_version == 8
    [d] = r.on_tick(1070).decisions
    assert d.pending.request_id == "old" and d.pending.plan.policy_version == 7


# --------------------------------------------------------------------------- properties

arrival = st.one_of(st.none(), st.tuples(st.floats(0, 300), st.booleans()))  # (delay ms, fails)


def _schedule(schedules, gaps, score_shift_ms: float = 0.0) -> list[tuple[float, int, str, tuple]]:  # noqa: ANN001
    """A heap of (time, seq, kind, args) events: requests ``gaps`` apart, each model's score ``when`` after it."""
    events: list[tuple[float, int, str, tuple]] = []
    t, seq = 1000.0, 0
    for i, models in enumerate(schedules):
        t += gaps[i % len(gaps)]
        events.append((t, seq, "request", (f"r{i}",)))
        seq += 1
        for name, when in zip(("m3", "m2", "m1"), models, strict=False):
            if when is not None:
                events.append((t + when[0] + score_shift_ms, seq, "score", (f"r{i}", name, when[1])))
                seq += 1
    heapq.heapify(events)
    return events


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(arrival, arrival, arrival), min_size=1, max_size=25),
       st.lists(st.floats(0, 5), min_size=1, max_size=25))
def test_every_request_is_answered_once_within_the_sla_by_the_best_acceptable_model(schedules, gaps):
    """Simulate requests and score arrivals, ticking the router exactly at its wake times."""
    r = Router(POLICY)
    events = _schedule(schedules, gaps)
    decisions, arrived, tokens = {}, {}, Tokens()
    now = 0.0

    def record(step):
        tokens.release(step)
        for d in step.decisions:
            assert d.pending.request_id not in decisions, "answered twice"
            decisions[d.pending.request_id] = (d, now)
            tokens.released[d.pending.token] += 1
            for tok in d.pending.score_tokens:
                tokens.released[tok] += 1

    while events or r.next_wake_ms() is not None:
        wake = r.next_wake_ms()
        if wake is not None and (not events or wake < events[0][0]):
            now = wake
            record(r.on_tick(now))
            continue
        now, _, kind, data = heapq.heappop(events)
        if kind == "request":
            record(r.on_request(data[0], 0, now, ("req", data[0]), now))
        else:
            rid, model, fails = data
            arrived.setdefault(rid, {})[model] = (now, fails)
            step = r.on_scores(model, "v", [score(rid, error="x" if fails else None)], ("score", rid, model), now)
            if step.kept == 0:
                tokens.released[("score", rid, model)] += 1
            record(step)

    assert set(decisions) == {f"r{i}" for i in range(len(schedules))}
    for rid, (d, at) in decisions.items():
        t0 = d.pending.t0
        assert d.due_ms == pytest.approx(at), "ticked at its wake times, the router is never late"
        assert at - t0 <= POLICY.plan("", 0).sla_ms + 1e-6, "decided after the SLA"
        chosen = d.choice.model
        ok = {m for m, (when, fails) in arrived.get(rid, {}).items() if when <= at and not fails}
        if chosen is not None:
            assert chosen in ok
            # nothing earlier in the chain had answered by then
            better = [s.model for s in d.pending.plan.stages[: d.choice.stage]]
            assert not ok.intersection(better)
            # and the answer was given as soon as it was acceptable, not later
            opens = d.pending.plan.stages[d.choice.stage].opens_at_ms
            assert at <= max(t0 + opens, arrived[rid][chosen][0]) + 1e-6
        else:
            assert not ok, "the default was given although a model had answered"
            if at - t0 < 100 - 1e-6:
                failed = {m for m, (when, fails) in arrived.get(rid, {}).items() if when <= at and fails}
                assert failed == {"m1", "m2", "m3"}, "an early default needs every model to have failed"
    # every input record is released exactly once: nothing held forever, nothing acked twice
    assert all(n == 1 for n in tokens.released.values()), tokens.released
    assert r.pending_count == 0 and r.orphan_count == 0


def test_a_pinned_version_ignores_scores_of_other_versions():
    router = Router(FixedChain("p", 1, [("m1", None)], sla_ms=100, versions={"m1": "2"}))
    router.on_request("r1", partition=0, record_ms=1000, token="t", now_ms=1000)
    old = router.on_scores("m1", "1", [Score("r1", 1000, 1000, 1001, score=0.1)], token="b1", now_ms=1002)
    assert (old.decisions, old.kept, router.stats.dropped["other_version", "m1"]) == ([], 0, 1)
    new = router.on_scores("m1", "2", [Score("r1", 1000, 1000, 1003, score=0.9)], token="b2", now_ms=1004)
    assert [d.choice.model for d in new.decisions] == ["m1"]
    assert new.decisions[0].pending.scores["m1"].model_version == "2"


def test_a_request_keeps_the_version_pin_of_the_policy_it_was_planned_under():
    router = Router(FixedChain("p", 1, [("m1", None)], sla_ms=100, versions={"m1": "1"}))
    router.on_request("r1", partition=0, record_ms=1000, token="t", now_ms=1000)
    router.set_policy(FixedChain("p", 2, [("m1", None)], sla_ms=100, versions={"m1": "2"}))
    assert router.on_scores("m1", "2", [Score("r1", 1000, 1000, 1001, score=0.9)], "b1", now_ms=1002).decisions == []
    step = router.on_scores("m1", "1", [Score("r1", 1000, 1000, 1003, score=0.1)], "b2", now_ms=1004)
    assert [d.pending.scores["m1"].model_version for d in step.decisions] == ["1"]
    # an early score waits for its request, and is judged by the plan the request gets
    router.set_policy(FixedChain("p", 3, [("m1", None)], sla_ms=100))  # no pin: the v1 score may wait
    assert router.on_scores("m1", "1", [Score("r2", 1000, 1000, 1001, score=0.1)], "b3", now_ms=1002).kept == 1
    router.set_policy(FixedChain("p", 4, [("m1", None)], sla_ms=100, versions={"m1": "2"}))
    assert router.on_request("r2", partition=0, record_ms=1000, token="t2", now_ms=1003).released == ["b3"]
    assert router.stats.dropped["other_version", "m1"] == 2


# --------------------------------------------------------------------------- the guard, and when answers were due

def test_the_last_decision_is_taken_the_guard_before_the_sla():
    r = Router(POLICY, sla_guard_ms=5)
    r.on_request("a", 0, 1000, "req", 1000)
    assert r.on_tick(1040).decisions == r.on_tick(1070).decisions == []  # the stages open; nobody answered
    assert r.next_wake_ms() == 1095
    assert r.on_tick(1094.9).decisions == []
    [d] = r.on_tick(1095).decisions
    assert (d.choice.reason, d.due_ms, d.decided_ms) == ("default", 1095, 1095)


def test_at_the_guarded_deadline_every_stage_is_open():
    late_stage = FixedChain("p", 1, [("m2", 97), ("m1", None)], sla_ms=100)
    r = Router(late_stage, sla_guard_ms=5)
    r.on_request("a", 0, 1000, "req", 1000)
    r.on_scores("m1", "v", [score("a")], "b", 1010)
    [d] = r.on_tick(1095).decisions  # m1's stage would open at 97: the deadline comes first
    assert (d.choice.model, d.due_ms) == ("m1", 1095)


def test_a_late_timer_is_seen_as_lateness_and_the_best_answer_by_then_is_taken():
    r = Router(POLICY)
    r.on_request("a", 0, 1000, "req", 1000)
    r.on_scores("m2", "v", [score("a")], "b1", 1005)
    assert r.next_wake_ms() == 1040
    [d] = r.on_scores("m3", "v", [score("a")], "b2", 1046).decisions  # the 1040 timer had not fired yet
    assert (d.choice.model, d.due_ms, d.decided_ms, d.lateness_ms) == ("m3", 1040, 1046, 6)


def test_a_request_that_reaches_the_worker_late_was_due_before_it_was_seen():
    r = Router(POLICY)
    r.on_scores("m2", "v", [score("a")], "b", 1010)  # an orphan: the model was ahead of the worker
    [d] = r.on_request("a", 0, record_ms=1000, token="req", now_ms=1055).decisions
    assert (d.choice.model, d.due_ms, d.pending.seen_ms) == ("m2", 1040, 1055)
    [d] = r.on_request("b", 0, record_ms=1000, token="req-b", now_ms=1300).decisions  # long after the SLA
    assert (d.choice.reason, d.due_ms, d.lateness_ms) == ("default", 1100, 200)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(arrival, arrival, arrival), min_size=1, max_size=15),
       st.lists(st.floats(0, 5), min_size=1, max_size=15),
       st.lists(st.floats(0, 60), min_size=1, max_size=15), st.sampled_from([0.0, 5.0]))
def test_when_an_answer_was_due_is_the_rule_replayed_on_its_arrivals_even_with_late_ticks(
        schedules, gaps, tick_delays, guard):
    """The router knows the due time without replaying the rule when it is punctual; with ticks that come late
    (a busy loop), or requests seen after their scores, it must still equal the replay (plan.due_ms)."""
    r = Router(POLICY, sla_guard_ms=guard)
    events = _schedule(schedules, gaps, score_shift_ms=-20)  # some scores before their request
    decisions, ticks = [], 0
    while events or r.next_wake_ms() is not None:
        wake = r.next_wake_ms()
        late = wake + tick_delays[ticks % len(tick_delays)] if wake is not None else None
        if late is not None and (not events or late < events[0][0]):
            ticks += 1
            decisions += r.on_tick(late).decisions
            continue
        now, _, kind, data = heapq.heappop(events)
        if kind == "request":
            decisions += r.on_request(data[0], 0, now, "req", now).decisions
        else:
            rid, model, fails = data
            decisions += r.on_scores(model, "v", [score(rid, error="x" if fails else None)], "s", now).decisions
    assert len(decisions) == len(schedules)
    for d in decisions:
        t0 = d.pending.t0
        arrivals = {m: (v.arrived_ms - t0, m in d.pending.failed) for m, v in d.pending.scores.items()}
        assert d.due_ms == pytest.approx(min(t0 + due_ms(d.pending.plan, arrivals, guard), d.decided_ms))
        assert d.due_ms <= d.decided_ms
