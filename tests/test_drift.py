"""The canary's drift detector on synthetic score streams: false alarms and delays.

The full measurement (400 streams of 100,000 scores) is ``benchmarks/drift.py``;
these runs are small and seeded, so they are fast and always give the same answer.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, norm

from canary.cusum import Cusum, siegmund_arl, threshold_for
from canary.drift import DriftMonitor, DriftSettings, NormalScores, psi
from canary.watch import CanaryWatch

SETTINGS = DriftSettings(reference_size=2000, every=10**9)


def scores(rng: np.random.Generator, n: int, shift_at: int | None = None, ks: float = 0.0,
           champion_only: bool = False) -> tuple[list[float], list[float]]:
    """Champion and canary scores, Beta(2, 5) marginals, latent correlation 0.95; after
    ``shift_at`` the champion (and the canary unless ``champion_only``) moves by KS ``ks``."""
    g = rng.standard_normal(n)
    champion = 0.95 * g + np.sqrt(1 - 0.95**2) * rng.standard_normal(n)
    canary = g.copy()
    if shift_at is not None:
        delta = 2 * norm.ppf((1 + ks) / 2)
        champion[shift_at:] += delta
        if not champion_only:
            canary[shift_at:] += delta
    to_score = lambda x: beta.ppf(norm.cdf(x), 2, 5).tolist()  # noqa: E731
    return to_score(champion), to_score(canary)


def first_alarm(champion: list[float], canary: list[float], settings: DriftSettings = SETTINGS) -> int | None:
    monitor = DriftMonitor(settings)
    for i, (c, k) in enumerate(zip(champion, canary, strict=False)):
        monitor.learn_one(c, k)
        if monitor.alarms:
            return i
    return None


def test_stationary_streams_raise_no_alarm():
    alarms = [first_alarm(*scores(np.random.default_rng(seed), 2000 + 20_000)) for seed in range(10)]
    assert alarms == [None] * 10  # 200,000 monitored scores in all; the budget is 1% per 100,000


@pytest.mark.parametrize(("ks", "champion_only", "within"), [(0.2, False, 400), (0.1, True, 200), (0.3, True, 60)])
def test_shifts_are_detected_soon_after_they_happen(ks, champion_only, within):
    delays = []
    for seed in range(10):
        champion, canary = scores(np.random.default_rng(100 + seed), 3000 + 3000, 3000, ks, champion_only)
        alarm = first_alarm(champion, canary)
        assert alarm is not None and alarm >= 3000, (seed, alarm)  # found, and not before the change
        delays.append(alarm - 3000)
    assert np.median(delays) <= within, delays


def test_the_threshold_follows_the_false_alarm_budget():
    k = 0.125
    strict, loose = threshold_for(k, 1e8), threshold_for(k, 1e5)
    assert strict > loose > 0
    assert siegmund_arl(k, strict) == pytest.approx(1e8, rel=1e-6)
    chart = Cusum.for_false_alarms(0.25, 0.01, 100_000)
    assert chart.k == 0.125 and chart.h == pytest.approx(threshold_for(0.125, 2e7))
    assert Cusum.for_false_alarms(0.25, 0.01, 100_000, slack_sd=0.02).h > chart.h  # a sampled reference: stricter


def test_normal_scores_of_a_reference_are_standard_and_ties_do_not_fool_them():
    rng = np.random.default_rng(1)
    ref = NormalScores(rng.beta(2, 5, 5000))
    z = np.array([ref.normal(x) for x in rng.beta(2, 5, 5000)])
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    discrete = NormalScores(rng.integers(0, 5, 5000) / 4)  # a forest's scores: a few values, many ties
    z = np.array([discrete.normal(x) for x in rng.integers(0, 5, 5000) / 4])
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    assert NormalScores(np.full(100, 0.5)).normal(0.9) == 0.0  # a constant model: nothing to judge


def test_window_statistics_describe_the_shift():
    champion, canary = scores(np.random.default_rng(3), 2000 + 1000, 2000, 0.3, champion_only=True)
    monitor = DriftMonitor(DriftSettings(reference_size=2000, window=500, every=50))
    for c, k in zip(champion, canary, strict=False):
        monitor.learn_one(c, k)
    report = monitor.report()
    assert report.drifting and report.direction == 1
    assert 0.2 < report.ks_reference < 0.4 and 0.2 < report.ks_canary < 0.4  # ~ the KS 0.3 put in
    assert report.psi_reference > 0.1 and report.wasserstein_reference > 0.02 and report.paired_mean_diff > 0.02
    assert psi(np.arange(100.0), np.arange(100.0), np.array([-np.inf, 50, np.inf])) == pytest.approx(0.0)


def test_the_watch_pairs_scores_in_any_order_and_lets_unpaired_ones_count_alone():
    watch = CanaryWatch("ch", "ca", DriftSettings(reference_size=2), max_unpaired=2)
    watch.observe("ca", "r1", 0.4)
    watch.observe("other", "r1", 0.9)  # not watched
    watch.observe("ch", "r1", 0.5)
    assert watch.report().scores == 1
    for rid in ("r2", "r3", "r4"):  # the canary never answers these
        watch.observe("ch", rid, 0.5)
    assert watch.report().scores == 2  # r2 left the bounded buffer and counted for the champion alone
    watch.observe("ch", "r5", None)  # a failed score is not a score
    assert watch.report().scores == 2
