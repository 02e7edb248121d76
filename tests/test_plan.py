"""The fallback rule, case by case: which answer, when, and why."""

import pytest

from rendezvous.routing.plan import Choice, Plan, choose, describe, due_ms, next_change_ms

PLAN = Plan.chain([("m3", 40), ("m2", 30), ("m1", None)], sla_ms=100, default_score=0.5)


def test_chain_turns_waits_into_opening_times():
    assert [(s.model, s.opens_at_ms) for s in PLAN.stages] == [("m3", 0), ("m2", 40), ("m1", 70)]


def test_opening_times_never_pass_the_sla():
    plan = Plan.chain([("a", 80), ("b", 80), ("c", None)], sla_ms=100)
    assert [s.opens_at_ms for s in plan.stages] == [0, 80, 100]


@pytest.mark.parametrize(
    ("answered", "failed", "elapsed", "expected"),
    [
        # the preferred model is taken the moment it answers
        ({"m3"}, set(), 1, Choice("m3", "preferred", 0)),
        ({"m3", "m2", "m1"}, set(), 99, Choice("m3", "preferred", 0)),
        # before its stage opens, a fallback's answer is not acceptable
        ({"m2", "m1"}, set(), 39.9, None),
        ({"m2", "m1"}, set(), 40, Choice("m2", "fallback", 1)),
        ({"m1"}, set(), 69.9, None),
        ({"m1"}, set(), 70, Choice("m1", "fallback", 2)),
        # a later stage never outranks an earlier one that has answered
        ({"m2", "m1"}, set(), 95, Choice("m2", "fallback", 1)),
        # a failed model is not waited for: the next stage opens at once
        ({"m2"}, {"m3"}, 1, Choice("m2", "fallback", 1)),
        ({"m1"}, {"m3", "m2"}, 1, Choice("m1", "fallback", 2)),
        ({"m1"}, {"m3"}, 1, None),  # m2 still has its 30 ms
        # nothing in time: the default, at the SLA and not before
        (set(), set(), 99.9, None),
        (set(), set(), 100, Choice(None, "default", -1)),
        # every model failed: no point waiting for the SLA
        (set(), {"m3", "m2", "m1"}, 5, Choice(None, "default", -1)),
    ],
)
def test_choose(answered, failed, elapsed, expected):
    assert choose(PLAN, answered, failed, elapsed) == expected


def test_models_outside_the_chain_are_never_chosen():
    assert choose(PLAN, {"shadow"}, set(), 100) == Choice(None, "default", -1)


@pytest.mark.parametrize(("elapsed", "expected"), [(0, 40), (39, 40), (40, 70), (70, 100), (100, 100)])
def test_next_change(elapsed, expected):
    assert next_change_ms(PLAN, elapsed) == expected


def test_descriptions_say_what_happened():
    assert describe(Choice("m3", "preferred", 0), PLAN, 12.0, set()) == "preferred model m3 answered after 12.0 ms"
    text = describe(Choice("m1", "fallback", 2), PLAN, 71.0, {"m2"})
    assert text == "fallback to m1 after 71.0 ms (m3 had not answered, m2 failed)"
    assert "every model in the chain failed" in describe(Choice(None, "default", -1), PLAN, 3, {"m1", "m2", "m3"})
    assert "default at the SLA (100 ms)" in describe(Choice(None, "default", -1), PLAN, 100, set())


@pytest.mark.parametrize(("elapsed", "expected"), [(0, 40), (40, 70), (70, 95), (95, 95)])
def test_next_change_with_a_guard_ends_at_the_guarded_deadline(elapsed, expected):
    assert next_change_ms(PLAN, elapsed, guard_ms=5) == expected


def test_the_guard_is_capped_at_a_quarter_of_the_sla():
    assert PLAN.deadline_ms(5) == 95 and PLAN.deadline_ms(60) == 75 and PLAN.deadline_ms(-1) == 100


@pytest.mark.parametrize(("arrivals", "guard", "expected"), [
    ({"m3": (12, False)}, 0, 12),                        # the preferred model: when it arrived
    ({"m2": (5, False)}, 0, 40),                         # a fallback: when its stage opened
    ({"m2": (55, False)}, 0, 55),                        # ... or when it arrived, if later
    ({"m2": (55, False), "m3": (60, False)}, 0, 55),     # what came after the answer was due does not matter
    ({"m3": (3, True), "m2": (8, True), "m1": (9, True)}, 0, 9),  # all failed: no reason to wait
    ({}, 0, 100), ({}, 5, 95),                           # nothing: the deadline
    ({"m1": (99, False)}, 5, 95),                        # arrived after the guarded deadline: the default was due
])
def test_due_is_the_first_moment_the_rule_answers(arrivals, guard, expected):
    assert due_ms(PLAN, arrivals, guard) == expected
