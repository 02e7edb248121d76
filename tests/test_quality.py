"""Model quality from outcomes (ROC AUC per model) and ramps gated on it: pure, clock injected."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rendezvous.routing.outcomes import RewardRule, ScoreIndex
from rendezvous.routing.quality import ModelQuality, roc_auc
from rendezvous.routing.ramp import RampLimits, RampMonitor, RampSchedule

HOUR_MS = 3_600_000


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_scikit_learn_with_ties(seed: int):
    rng = np.random.default_rng(seed)
    scores, labels = rng.integers(0, 10, 300) / 10, rng.random(300) < 0.3
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_quality_needs_both_classes_and_forgets_beyond_its_window():
    q = ModelQuality(window=50, min_per_class=5)
    for _ in range(10):
        q.learn_one("m", 0.9, True)
    assert q.roc_auc("m") is None  # no negatives yet: no ROC curve
    for _ in range(50):  # a window of wrong answers only: the good past is forgotten
        q.learn_one("m", 0.9, False)
        q.learn_one("m", 0.1, True)
    assert q.roc_auc("m") == 0.0 and q.outcomes("m") == 50
    q.learn_one("m", 0.5, 0.7)  # a numeric outcome in the window: no ROC curve, errors instead
    assert q.roc_auc("m") is None and set(q.measures("m")) == {"mae", "rmse"}


def test_every_measure_agrees_with_scikit_learn():
    from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, mean_absolute_error, mean_squared_error

    rng = np.random.default_rng(3)
    labels = rng.random(400) < 0.4
    scores = np.clip(np.where(labels, 0.65, 0.35) + rng.normal(0, 0.2, 400), 0, 1)
    q = ModelQuality(window=400, min_per_class=5, threshold=0.6)
    for s, y in zip(scores, labels, strict=True):
        q.learn_one("m", s, bool(y))
    got = q.measures("m")
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, scores >= 0.6))
    assert got["log_loss"] == pytest.approx(log_loss(labels, np.clip(scores, 1e-6, 1 - 1e-6)))
    assert got["brier"] == pytest.approx(brier_score_loss(labels, scores))
    assert got["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    truth = rng.normal(10, 3, 200)
    predicted = truth + rng.normal(0, 1, 200)
    for s, y in zip(predicted, truth, strict=True):
        q.learn_one("regressor", s, y)
    errors = q.measures("regressor")
    assert errors["mae"] == pytest.approx(mean_absolute_error(truth, predicted))
    assert errors["rmse"] == pytest.approx(np.sqrt(mean_squared_error(truth, predicted)))


def test_every_model_that_scored_is_judged_whatever_was_returned():
    index, q, rng = ScoreIndex(HOUR_MS, 10_000), ModelQuality(min_per_class=10), random.Random(7)
    for i in range(2000):
        label = rng.random() < 0.5
        good = min(max(rng.gauss(0.7 if label else 0.3, 0.15), 0), 1)
        noise = rng.random()
        index.record(f"r{i}", {"good": good, "noise": noise}, chosen="noise", now_ms=i)
        scores = index.scores(f"r{i}")
        status, _ = index.credit(f"r{i}", label, i, RewardRule("bernoulli", credit="chosen"), i)
        assert status == "credited" and scores is not None
        for model, score in scores.items():
            q.learn_one(model, score, label)
    assert q.roc_auc("good") > 0.9 > 0.6 > q.roc_auc("noise") > 0.4  # judged though never returned


def test_a_ramp_whose_auc_falls_short_of_the_champions_is_rolled_back():
    limits = RampLimits(min_outcomes=100, max_worse=(("roc_auc", 0.05),))
    ramp = RampMonitor("new", RampSchedule(), limits, applied_ms=0, champion="old")
    q = ModelQuality(min_per_class=10)
    rng = random.Random(3)
    for _ in range(99):
        label = rng.random() < 0.5
        q.learn_one("old", 0.8 if label else 0.2, label)
        q.learn_one("new", rng.random(), label)
    assert ramp.verdict(q) is None  # fewer outcomes than min_outcomes: not judged yet
    q.learn_one("old", 0.8, True)
    q.learn_one("new", 0.1, True)
    why = ramp.verdict(q)
    assert why is not None and why.startswith("roc_auc ") and "champion old" in why, why


def test_a_ramp_as_good_as_the_champion_carries_on():
    ramp = RampMonitor("new", RampSchedule(), RampLimits(min_outcomes=50, max_worse=(("roc_auc", 0.05),)),
                       applied_ms=0, champion="old")
    q = ModelQuality(min_per_class=10)
    for i in range(200):
        label = i % 2 == 0
        q.learn_one("old", 0.8 if label else 0.2, label)
        q.learn_one("new", 0.7 if label else 0.3, label)
    assert ramp.verdict(q) is None


@pytest.mark.parametrize(("measure", "limit"), [("accuracy", 0.05), ("log_loss", 0.1), ("brier", 0.05)])
def test_a_ramp_worse_than_the_champion_on_a_measure_is_rolled_back_and_one_as_good_carries_on(measure, limit):
    """max_worse_than_champion: accuracy falls, log loss and Brier rise; judged after min_outcomes only."""
    limits = RampLimits(min_outcomes=100, max_worse=((measure, limit),))
    worse = RampMonitor("new", RampSchedule(), limits, applied_ms=0, champion="old")
    as_good = RampMonitor("twin", RampSchedule(), limits, applied_ms=0, champion="old")
    q = ModelQuality(min_per_class=10)
    rng = random.Random(7)
    for i in range(150):
        label = rng.random() < 0.5
        q.learn_one("old", 0.85 if label else 0.15, label)
        q.learn_one("twin", 0.85 if label else 0.15, label)
        q.learn_one("new", 0.85 if (label if rng.random() < 0.7 else not label) else 0.15, label)  # 30% wrong
        if i == 50:
            assert worse.verdict(q) is None  # 51 outcomes < min_outcomes: not judged yet
    why = worse.verdict(q)
    assert why is not None and why.startswith(f"{measure} ") and "champion old" in why, why
    assert as_good.verdict(q) is None


def test_a_numeric_measure_is_compared_only_where_it_is_defined():
    limits = RampLimits(min_outcomes=20, max_worse=(("rmse", 0.5), ("accuracy", 0.01)))
    ramp = RampMonitor("new", RampSchedule(), limits, applied_ms=0, champion="old")
    q = ModelQuality()
    for i in range(40):
        q.learn_one("old", 10.0 + 0.1 * (i % 3), 10.0)
        q.learn_one("new", 12.0, 10.0)  # two off every time: RMSE 2 against ~0.1
    why = ramp.verdict(q)
    assert why is not None and why.startswith("rmse ") and "accuracy" not in why, why


def test_a_ramp_that_held_its_full_share_within_its_limits_is_promoted_and_only_then():
    """Flagger's promotion: the schedule ran to max_share and held it a step, nothing is wrong, and the
    outcomes judged it (min_outcomes each) no worse than the champion by more than the limits."""
    schedule = RampSchedule(start=0.1, step=0.2, every_s=60, max_share=0.5)  # 0.5 from 120 s, held by 180 s
    limits = RampLimits(min_outcomes=100, max_worse=(("accuracy", 0.05),), promote=True)
    ramp = RampMonitor("new", schedule, limits, applied_ms=0, champion="old")
    worse = RampMonitor("bad", schedule, limits, applied_ms=0, champion="old")
    kept = RampMonitor("twin", schedule, RampLimits(min_outcomes=100, promote=False), applied_ms=0, champion="old")
    q = ModelQuality(min_per_class=10)
    rng = random.Random(5)
    for i in range(150):
        label = rng.random() < 0.5
        for model, right in (("old", 0.9), ("new", 0.9), ("bad", 0.6), ("twin", 0.9)):
            q.learn_one(model, 0.85 if (label if rng.random() < right else not label) else 0.15, label)
        if i == 50:
            assert ramp.promotion(200_000, q) is None  # 51 outcomes: not judged yet
    assert ramp.promotion(179_999, q) is None  # the full share not yet held for a step
    why = ramp.promotion(180_000, q)
    assert why is not None and why.startswith("held 50% of requests within its limits; on 150 outcomes"), why
    assert "accuracy" in why and "champion old" in why
    assert worse.promotion(180_000, q) is None and worse.verdict(q) is not None  # rolled back instead
    assert kept.promotion(10**9, q) is None  # promote: false
    ramp.halt(f"promoted: {why}")
    assert ramp.promotion(10**9, q) is None and ramp.share(10**9) == 0.0  # judged once
