"""Learning from outcomes, pure: posteriors, forgetting, strategies, outcome crediting, ramps."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from policies import load_policy_text
from rendezvous.routing.bandit import (
    Adaptive,
    BetaBernoulli,
    Decay,
    Learner,
    NormalGamma,
    Observation,
    Window,
)
from rendezvous.routing.outcomes import RewardRule, ScoreIndex
from rendezvous.routing.policy import compile_policy
from rendezvous.routing.ramp import RampLimits, RampMonitor, RampSchedule
from rendezvous.service.policies import demoted, promoted

HOUR_MS = 3_600_000


def policy(routing: str, extra: str = "") -> str:
    return f"""\
name: p
version: 1
sla_ms: 100
routing:
{routing}
  chain:
    - {{model: a, wait_ms: 20}}
    - {{model: b, wait_ms: 20}}
    - {{model: c}}
{extra}"""


def shares(compiled, n: int, now_ms: float = 0.0) -> Counter:
    return Counter(compiled.plan(f"r{i}", now_ms).models[0] for i in range(n))


def feed(learner: Learner, rng: random.Random, t: float, n: int, every_ms: float, right: dict[str, float]) -> float:
    """``n`` outcomes ``every_ms`` apart, each model right with its probability; the time after the last."""
    for _ in range(n):
        t += every_ms
        for model, p in right.items():
            learner.observe(model, float(rng.random() < p), t)
    return t


# ----------------------------------------------------------------------------- forgetting


def test_decay_halves_an_observation_every_half_life():
    d = Decay(half_life_s=10)
    d.add(1.0, t_ms=0)
    assert d.stats(10_000).n == pytest.approx(0.5)
    assert d.stats(20_000).total == pytest.approx(0.25)


def test_decay_does_not_depend_on_arrival_order():
    obs = [(random.Random(i).random(), i * 137.0) for i in range(200)]
    a, b = Decay(half_life_s=5), Decay(half_life_s=5)
    for r, t in obs:
        a.add(r, t)
    for r, t in sorted(obs, key=lambda o: -o[1]):  # newest first, as another worker might see them
        b.add(r, t)
    sa, sb = a.stats(60_000), b.stats(60_000)
    assert (sa.n, sa.total, sa.squares) == pytest.approx((sb.n, sb.total, sb.squares))


def test_window_counts_only_recent_observations():
    w = Window(window_s=10)
    for t in range(0, 30_000, 1000):
        w.add(1.0, t)
    assert w.stats(30_000).n == 10


def test_adaptive_forgetting_is_rivers_adwin():
    """Adaptive uses river's ADWIN core directly (importing river.drift costs a second): with the same
    delta, both keep the same window up to the first change. There river's wrapper starts afresh, while
    ADWIN itself, and Adaptive, keep the part of the window after the cut: evidence about the new regime."""
    from river.drift import ADWIN

    rng = random.Random(4)
    ours, theirs = Adaptive(delta=0.05), ADWIN(delta=0.05)
    i = 0
    while not theirs.drift_detected:
        reward = float(rng.random() < (0.9 if i < 8000 else 0.6))
        ours.add(reward, t_ms=i)
        theirs.update(reward)
        stats = ours.stats(now_ms=i)
        assert (stats.n, stats.total) == (theirs.width, theirs.total)
        i += 1
    assert 8000 < i < 9000 and ours.changes == 1
    assert stats.squares == pytest.approx(theirs.variance + theirs.total ** 2 / theirs.width)
    assert 0 < stats.n < 2000 and stats.total / stats.n < 0.85  # what is left leans to the new regime (0.6)


def test_adaptive_forgetting_rarely_forgets_a_stationary_reward():
    learner = Learner(BetaBernoulli(), change_delta=0.05)
    rng = random.Random(11)
    for i in range(50_000):
        learner.observe("m", float(rng.random() < 0.85), t_ms=i)
    assert learner.changes("m") <= 1 and learner.weight("m", 50_000) > 25_000
    assert learner.mean("m", 50_000) == pytest.approx(0.85, abs=0.01)


def test_never_forgetting_keeps_everything():
    d = Decay(half_life_s=None)
    d.add(1.0, 0)
    assert d.stats(10**12).n == 1


# ----------------------------------------------------------------------------- posteriors


def test_beta_posterior_concentrates_on_the_better_model():
    learner, rng = Learner(BetaBernoulli()), random.Random(3)
    for t in range(2000):
        learner.observe("good", float(rng.random() < 0.9), t)
        learner.observe("bad", float(rng.random() < 0.7), t)
    assert learner.mean("good", 2000) == pytest.approx(0.9, abs=0.03)
    wins = sum(learner.sample("good", 2000, rng) > learner.sample("bad", 2000, rng) for _ in range(2000))
    assert wins > 1990


def test_normal_gamma_learns_mean_rewards():
    learner, rng = Learner(NormalGamma()), random.Random(4)
    for t in range(3000):
        learner.observe("m", rng.gauss(-0.3, 0.1), t)
    assert learner.mean("m", 3000) == pytest.approx(-0.3, abs=0.01)
    draws = [learner.sample("m", 3000, rng) for _ in range(500)]
    assert -0.33 < sum(draws) / len(draws) < -0.27


# ----------------------------------------------------------------------------- strategies


@pytest.mark.parametrize(("credit", "judged_by"), [("chosen", "sampled"), ("all", "means")])
def test_thompson_prefers_the_best_model_once_it_has_learned(credit: str, judged_by: str):
    doc = load_policy_text(policy("  strategy: thompson", f"learning:\n  reward: {{credit: {credit}}}\n"))
    compiled = compile_policy(doc, rng=random.Random(5))
    rng = random.Random(6)
    for t in range(3000):
        for model, p in (("a", 0.6), ("b", 0.9), ("c", 0.7)):
            compiled.learner.observe(model, float(rng.random() < p), t)
    counts = shares(compiled, 1000, now_ms=3000)
    assert counts["b"] > 980
    plan = compiled.plan("x", 3000)
    assert plan.models[0] == "b" and set(plan.audit[judged_by]) == {"a", "b", "c"}
    assert plan.models[1:] == ("c", "a")  # the rest by posterior mean, best first


def test_thompson_with_full_information_does_not_explore_close_models():
    """Every model is credited whichever answer is returned (credit: all), so a draw away from the
    best mean would buy nothing: with b barely ahead of a on little evidence, b is preferred every time;
    with credit: chosen, a is still tried."""
    for credit, tried_a in (("all", False), ("chosen", True)):
        doc = load_policy_text(policy("  strategy: thompson", f"learning:\n  reward: {{credit: {credit}}}\n"))
        compiled = compile_policy(doc, rng=random.Random(3))
        for t in range(20):
            compiled.learner.observe("a", float(t % 10 < 7), t)
            compiled.learner.observe("b", float(t % 10 < 8), t)
            compiled.learner.observe("c", 0.0, t)
        assert (shares(compiled, 500, now_ms=20)["a"] > 0) is tried_a, credit


def test_thompson_with_the_default_learning_follows_a_change_and_settles_otherwise():
    """No forgetting given: adaptive. An hour of a stationary stream leaves every observation
    weighing (no half-life erodes the evidence); a degraded model is left within a few hundred outcomes."""
    doc = load_policy_text(policy("  strategy: thompson", "learning:\n  reward: {credit: chosen}\n"))
    compiled, rng = compile_policy(doc, rng=random.Random(7)), random.Random(8)
    t = feed(compiled.learner, rng, 0, 3000, 1200, {"a": 0.95, "b": 0.8, "c": 0.7})  # a is best for an hour...
    assert compiled.learner.weight("a", t) == 3000 and compiled.learner.changes("a") == 0
    assert shares(compiled, 500, t)["a"] > 490
    t = feed(compiled.learner, rng, t, 400, 1000, {"a": 0.5, "b": 0.8, "c": 0.7})  # ...then degrades: b leads
    assert compiled.learner.changes("a") >= 1 and compiled.learner.changes("b") == 0
    assert shares(compiled, 500, t)["b"] > 450


def test_thompson_forgetting_follows_a_change():
    doc = load_policy_text(policy("  strategy: thompson", "learning:\n  forgetting: {half_life_s: 60}\n"))
    compiled, rng = compile_policy(doc, rng=random.Random(7)), random.Random(8)
    t = feed(compiled.learner, rng, 0, 3000, 1200, {"a": 0.95, "b": 0.8, "c": 0.7})  # a is best for an hour...
    assert shares(compiled, 500, t)["a"] > 450
    t = feed(compiled.learner, rng, t, 600, 1000, {"a": 0.5, "b": 0.8, "c": 0.7})  # ...then degrades; 10 min later
    assert shares(compiled, 500, t)["b"] > 450


def test_the_exploration_share_is_honoured():
    doc = load_policy_text(policy("  strategy: thompson\n  explore: 0.2"))
    compiled = compile_policy(doc, rng=random.Random(9))
    explored = sum(bool(compiled.plan(f"r{i}", 0).audit.get("explored")) for i in range(5000))
    assert 0.18 < explored / 5000 < 0.22  # binomial: 5 sigma is 0.028


def test_epsilon_greedy_and_weighted_shares():
    eps = compile_policy(load_policy_text(policy("  strategy: epsilon-greedy\n  epsilon: 0.3")), rng=random.Random(1))
    for t in range(100):
        eps.learner.observe("c", 1.0, t)
        eps.learner.observe("a", 0.0, t)
        eps.learner.observe("b", 0.0, t)
    counts = shares(eps, 6000, 100)
    assert 0.78 < counts["c"] / 6000 < 0.82  # 0.7 greedy + 0.3 / 3 explored
    weighted = compile_policy(load_policy_text(policy("  strategy: weighted\n  weights: {a: 1, b: 3}")),
                              rng=random.Random(2))
    counts = shares(weighted, 8000)
    assert counts["c"] == 0 and 0.72 < counts["b"] / 8000 < 0.78


def test_fixed_always_prefers_the_first_and_shadows_are_never_in_a_plan():
    doc = load_policy_text(policy("  strategy: fixed", "models:\n  s: {role: shadow}\n"))
    compiled = compile_policy(doc)
    assert {compiled.plan(str(i), 0).models for i in range(50)} == {("a", "b", "c")}
    assert "s" in compiled.models  # its scores are kept and credited


# ----------------------------------------------------------------------------- outcomes


def test_outcomes_credit_every_model_late_ones_included():
    index, rule = ScoreIndex(HOUR_MS, 10), RewardRule("bernoulli", threshold=0.5)
    index.record("r", {"a": 0.9, "b": 0.3}, chosen="a", now_ms=0)
    index.add_late("r", "c", 0.8)
    status, obs = index.credit("r", True, 5000, rule, 5000)
    assert status == "credited"
    assert {(o.model, o.reward) for o in obs} == {("a", 1.0), ("b", 0.0), ("c", 1.0)}
    assert all(o.t_ms == 5000 for o in obs)


def test_the_index_knows_which_version_scored_a_request_late_ones_included():
    """Quality is judged per model version: a score that came after the answer keeps its version too."""
    index = ScoreIndex(HOUR_MS, 10)
    index.record("r", {"a": 0.9}, chosen="a", now_ms=0, versions={"a": "2"})
    index.add_late("r", "c", 0.8, "1.0.0")
    assert index.versions("r") == {"a": "2", "c": "1.0.0"} and index.versions("unknown") == {}


def test_duplicate_unknown_and_expired_outcomes_are_not_credited():
    index, rule = ScoreIndex(HOUR_MS, 10), RewardRule()
    index.record("r", {"a": 0.9}, "a", now_ms=0)
    assert index.credit("r", 1, 1, rule, 1)[0] == "credited"
    assert index.credit("r", 1, 2, rule, 2)[0] == "duplicate"
    assert index.credit("nobody", 1, 3, rule, 3) == ("unknown", [])
    index.record("old", {"a": 0.1}, "a", now_ms=0)
    index.expire(HOUR_MS + 1)
    assert index.credit("old", 0, HOUR_MS + 2, rule, HOUR_MS + 2)[0] == "unknown"


def test_outcomes_already_credited_elsewhere_are_not_credited_again():
    """After a restart, observations read back from the bandit topic mark their requests."""
    index = ScoreIndex(HOUR_MS, 10)
    index.mark_credited("r", now_ms=0)  # read back before the result was re-indexed
    index.record("r", {"a": 0.5}, "a", now_ms=1)
    assert index.credit("r", 1, 2, RewardRule(), 2)[0] == "duplicate"


def test_reward_rules():
    assert RewardRule("gaussian", target="error").reward(0.8, 1.0) == pytest.approx(-0.2)
    assert RewardRule("gaussian", target="outcome").reward(0.8, 12.5) == 12.5
    index = ScoreIndex(HOUR_MS, 10)
    index.record("r", {"a": 0.2, "b": 0.9}, chosen="b", now_ms=0)
    _, obs = index.credit("r", 3.0, 0, RewardRule("gaussian", target="outcome", credit="chosen"), 0)
    assert obs == [Observation("r", "b", 3.0, 0)]


def test_the_score_index_is_bounded():
    index = ScoreIndex(HOUR_MS, max_entries=3)
    for i in range(5):
        index.record(f"r{i}", {"a": 0.1}, "a", now_ms=i)
    assert len(index) == 3 and index.credit("r0", 1, 9, RewardRule(), 9)[0] == "unknown"


# ----------------------------------------------------------------------------- ramps


def test_ramp_rolls_back_on_disagreement_with_champion_or_canary():
    ramp = RampMonitor("new", RampSchedule(), RampLimits(max_disagreement=0.2, max_canary_disagreement=0.5,
                                                         min_samples=10), 0, "old", canary="ref")
    for i in range(10):
        ramp.observe({"new": (0.9, 5), "old": (0.9 if i < 7 else 0.1, 5), "ref": (0.9, 5)}, 10, preferred=False)
    assert ramp.verdict() == "disagrees with the champion old on 30.0% of requests > limit 20.0%"
    ramp.halt("x")
    assert ramp.verdict() is None and ramp.share(10**9) == 0.0


def test_a_ramped_model_that_stops_answering_in_time_is_caught():
    ramp = RampMonitor("new", RampSchedule(), RampLimits(p99_latency_ms=50, min_samples=5), 0, "old")
    for _ in range(20):
        ramp.observe({"old": (0.5, 3)}, decision_ms=3, preferred=False)  # not preferred: not its latency
    assert ramp.verdict() is None
    for _ in range(5):
        ramp.observe({"old": (0.5, 3)}, decision_ms=30, preferred=True)  # preferred, and not in by the answer
    assert ramp.verdict().startswith("p99 latency not answered in time > limit 50 ms")


def test_ramped_model_is_preferred_for_its_share():
    doc = load_policy_text(policy("  strategy: fixed", "models:\n  new:\n    role: ramp\n    wait_ms: 20\n"
                                  "    ramp: {start: 0.1, step: 0.2, every_s: 10, max_share: 0.5}\n"))
    compiled = compile_policy(doc, rng=random.Random(3), applied_ms=0)
    early, later = shares(compiled, 4000, now_ms=0), shares(compiled, 4000, now_ms=25_000)
    assert 0.08 < early["new"] / 4000 < 0.12 and 0.47 < later["new"] / 4000 < 0.53
    plans = [compiled.plan(str(i), 0) for i in range(100)]
    ramped = next(p for p in plans if p.audit.get("ramp"))
    assert ramped.models == ("new", "a", "b", "c") and ramped.audit["ramp"] == {"model": "new", "share": 0.1}


def test_rollback_is_the_next_version_with_the_model_in_shadow():
    doc = load_policy_text(policy("  strategy: fixed", "models:\n  new:\n    role: ramp\n    wait_ms: 20\n"
                                  "    ramp: {p99_latency_ms: 40}\n"))
    back = demoted(doc, "new", "p99 latency 90 ms > limit 40 ms")
    assert back.version == 2 and back.models["new"].role == "shadow" and back.models["new"].ramp is None
    assert "rolled back" in back.description


def test_promotion_is_the_next_version_with_the_model_first_in_the_chain_and_champion():
    doc = load_policy_text(policy("  strategy: fixed", "champion: a\nmodels:\n  new:\n    role: ramp\n"
                                  "    version: '2'\n    wait_ms: 30\n    ramp: {min_outcomes: 50}\n"))
    up = promoted(doc, "new", "held 50% of requests within its limits")
    assert up.version == 2 and up.models["new"].role == "active" and up.models["new"].ramp is None
    assert up.models["new"].version == "2"  # the pin stays: the version judged is the version promoted
    assert [(e.model, e.wait_ms) for e in up.routing.chain] == [("new", 30), ("a", 20), ("b", 20), ("c", None)]
    assert up.champion == "new" and "new promoted" in up.description
    assert compile_policy(up).plan("r", 0).models == ("new", "a", "b", "c")


# ---------------------------------------------------------------------- three defects, fixed (issue 12)

def test_credit_chosen_learns_nothing_from_a_default_answer():
    """A default answer returned no model's score: its outcome says nothing about any model."""
    index = ScoreIndex(HOUR_MS, 10)
    index.record("r", {"a": 0.9, "b": 0.3}, chosen=None, now_ms=0)  # both scored, too late: the default answered
    index.add_late("r", "c", 0.7)
    status, obs = index.credit("r", True, 0, RewardRule("bernoulli", credit="chosen"), 0)
    assert (status, obs) == ("credited", [])
    index.record("s", {"a": 0.9, "b": 0.3}, chosen=None, now_ms=0)
    _, every = index.credit("s", True, 0, RewardRule("bernoulli", credit="all"), 0)
    assert {o.model for o in every} == {"a", "b"}  # full information: every model that scored is credited


@pytest.mark.parametrize("change", [
    "    reward: {threshold: 0.8}", "    reward: {credit: chosen}",
    "    reward: {kind: gaussian, target: outcome}",
])
def test_a_policy_that_changes_what_a_reward_means_starts_afresh(change: str):
    from rendezvous.routing.policy import same_learning

    base = load_policy_text(policy("  strategy: thompson"))
    changed = load_policy_text(policy("  strategy: thompson", "learning:\n" + change).replace("version: 1", "version: 2"))
    assert not same_learning(base, changed)
    assert same_learning(base, load_policy_text(policy("  strategy: epsilon-greedy")))  # routing alone: carry on


def test_the_outcome_horizon_follows_the_policy_in_force():
    from rendezvous.kernel.settings import KafkaSettings
    from rendezvous.routing.router import Router
    from rendezvous.service.control import Drained
    from rendezvous.service.control_plane import ControlPlane
    from rendezvous.service.policies import PolicyStore, policy_record
    from rendezvous.service.settings import ServiceSettings
    from rendezvous.service.writer import ResultWriter

    settings = ServiceSettings(KafkaSettings("127.0.0.1:9"))  # clients are built, never connected
    store = PolicyStore(random.Random(1))
    store.adopt(load_policy_text(policy("  strategy: fixed", "learning: {outcome_horizon_s: 60}")), 0)
    v2 = load_policy_text(policy("  strategy: fixed", "learning: {outcome_horizon_s: 600}").replace("version: 1", "version: 2"))

    class Feed:
        def __init__(self) -> None:
            self.pending = Drained(policies=[(policy_record(v2), 1.0, None)])

        def drain(self) -> Drained:
            out, self.pending = self.pending, Drained()
            return out

    writer = ResultWriter(settings.kafka, settings.topics, "w", lambda _: None)
    plane = ControlPlane(settings, store, Feed(), Router(store.compiled), writer, lambda _: None)  # type: ignore[arg-type]
    assert plane.crediting.index.horizon_ms == 60_000
    plane.tick(2.0)
    assert store.doc.version == 2 and plane.crediting.index.horizon_ms == 600_000


def test_the_bandit_benchmark_drives_the_real_decision_code():
    """benchmarks/bandit.py runs Router, ScoreIndex and Learner as a worker does; a short swap with
    only the chosen model credited must still move the traffic to the new best model."""
    from benchmarks.bandit import simulate

    run = simulate("default", "swap", "chosen", 2_000.0, 4_000, seed=1)
    assert run["switch_at"] == 2_000 and run["moved"] is not None and run["moved"] < 1_000, run["moved"]
    assert run["changes_detected"]["m3"] >= 1  # m3 is the one that degraded
