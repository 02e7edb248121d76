"""Is the champion's score distribution drifting? Compared with the canary, and with its own past.

The canary is an old model kept scoring every request. Because champion and
canary score the *same* requests, their paired difference cancels the
request-to-request noise that a comparison of two distributions has to wade
through, so a change in the champion alone shows up far sooner. A change in
the inputs moves both; the champion's scores against its own reference catch
that.

:class:`DriftMonitor` learns one request at a time (``learn_one(champion,
canary)``; either may be None when that model did not answer). Its first
``reference_size`` requests define normal. After that:

* two sequential tests (:class:`~canary.cusum.Cusum`) decide when drift is
  real: one on the champion's scores mapped through the reference's normal
  scores (a location shift of any distribution becomes a mean shift), one on
  the standardized paired difference champion − canary. Each is tuned so that
  a stream with no change raises a false alarm with probability
  ``false_alarms`` per ``per`` scores;
* descriptive statistics over the last ``window`` scores, for dashboards:
  Kolmogorov–Smirnov distance, population stability index and Wasserstein
  distance, each against the reference and against the canary, and the mean
  paired difference.

>>> import random
>>> rng = random.Random(7)
>>> monitor = DriftMonitor(DriftSettings(reference_size=500, window=200))
>>> for _ in range(3000):
...     x = rng.gauss(0, 1)
...     monitor.learn_one(champion=x + rng.gauss(0, 0.1), canary=x)
>>> monitor.report().drifting
False
>>> for i in range(1, 1000):   # the champion alone starts scoring 0.3 higher
...     x = rng.gauss(0, 1)
...     monitor.learn_one(champion=x + 0.3 + rng.gauss(0, 0.1), canary=x)
...     if monitor.report().drifting:
...         break
>>> i < 40, monitor.report().direction
(True, 1)
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import ndtri

from canary.cusum import Cusum

__all__ = ["NormalScores", "DriftSettings", "DriftReport", "psi", "DriftMonitor"]


class NormalScores:
    """Maps a value to a standard normal one through a reference sample's ranks.

    Whatever the reference's distribution, its own values map to mean 0, sd 1
    (standardized after the mapping, because ties shrink the spread); a value
    from a shifted distribution maps to a shifted mean. A reference that never
    varied maps everything to 0: nothing to compare with.
    """

    def __init__(self, reference: np.ndarray) -> None:
        self.sorted = np.sort(reference)
        self._list = self.sorted.tolist()
        z = self._raw(self.sorted)
        self.mean, self.sd = float(z.mean()), float(z.std())

    def _raw(self, x: np.ndarray | float) -> np.ndarray:
        ref, n = self.sorted, len(self.sorted)
        rank = (np.searchsorted(ref, x, "left") + np.searchsorted(ref, x, "right")) / 2  # ties count half
        return np.asarray(ndtri(np.clip(rank / n, 0.5 / n, 1 - 0.5 / n)))

    def normal(self, x: float) -> float:
        if self.sd < 1e-9:
            return 0.0
        ref, n = self._list, len(self._list)  # bisect on a list: the hot path, once per score
        u = (bisect_left(ref, x) + bisect_right(ref, x)) / (2 * n)
        return (float(ndtri(min(max(u, 0.5 / n), 1 - 0.5 / n))) - self.mean) / self.sd


@dataclass(frozen=True)
class DriftSettings:
    reference_size: int = 5000  # requests whose scores define normal
    window: int = 500  # scores the descriptive statistics look at
    shift_sd: float = 0.25  # the shift (in sd) the sequential tests are tuned to find fastest
    false_alarms: float = 0.01  # probability of a false alarm ...
    per: int = 100_000  # ... per this many scores of a stream that does not change
    psi_bins: int = 10
    every: int = 50  # recompute the descriptive statistics every this many scores


@dataclass(frozen=True)
class DriftReport:
    phase: str  # "reference" while learning what normal is, then "monitoring"
    scores: int  # champion scores seen
    monitored: int  # champion scores seen since the reference was complete
    drifting: bool
    direction: int  # +1: champion scores run high, -1: low, 0: no drift
    alarms: int  # times drift was raised (rising edges)
    first_alarm_after: int | None  # monitored scores before the first alarm
    first_alarm_at: int | None  # champion scores seen (all phases) at the first alarm
    cusum_reference: float
    cusum_canary: float
    threshold: float
    ks_reference: float | None = None
    ks_canary: float | None = None
    psi_reference: float | None = None
    psi_canary: float | None = None
    wasserstein_reference: float | None = None
    wasserstein_canary: float | None = None
    paired_mean_diff: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def psi(expected: np.ndarray, actual: np.ndarray, edges: np.ndarray) -> float:
    """Population stability index of ``actual`` against ``expected`` over bins with ``edges``."""
    e = np.histogram(expected, edges)[0] / max(len(expected), 1)
    a = np.histogram(actual, edges)[0] / max(len(actual), 1)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftMonitor:
    def __init__(self, settings: DriftSettings = DriftSettings()) -> None:
        # scipy.stats takes ~0.6 s to import: pay it when a monitor is made (a worker starting,
        # a policy naming a canary), not mid-stream, and not in every CLI that imports this module.
        import scipy.stats  # noqa: F401

        self.settings = s = settings
        self._reference: list[float] = []
        self._pairs: list[float] = []
        self._ref: np.ndarray | None = None
        self._paired = False
        # The reference is a sample, so "normal" is known only to about 1/sqrt(n) sd: the
        # thresholds are set as if the charts drifted by that much already. The false-alarm
        # budget is split between the two charts, with half kept back as a margin (measured
        # by benchmarks/drift.py: the approximations behind the threshold are not exact).
        slack = 1 / np.sqrt(s.reference_size)
        self.vs_reference = Cusum.for_false_alarms(s.shift_sd, s.false_alarms / 4, s.per, slack)
        self.vs_canary = Cusum.for_false_alarms(s.shift_sd, s.false_alarms / 4, s.per, slack)
        self._champion: deque[float] = deque(maxlen=s.window)
        self._canary: deque[float] = deque(maxlen=s.window)
        self._diffs: deque[float] = deque(maxlen=s.window)
        self.scores = self.monitored = self.alarms = 0
        self.first_alarm_after: int | None = None
        self.first_alarm_at: int | None = None
        self._drifting = False
        self._stats: dict[str, float | None] = {}

    # ------------------------------------------------------------------ learning

    def learn_one(self, champion: float | None, canary: float | None = None) -> None:
        if canary is not None:
            self._canary.append(canary)
        if champion is None:
            return
        self.scores += 1
        self._champion.append(champion)
        if canary is not None:
            self._diffs.append(champion - canary)
        if self._ref is None:
            self._reference.append(champion)
            if canary is not None:
                self._pairs.append(champion - canary)
            if len(self._reference) >= self.settings.reference_size:
                self._freeze_reference()
            return
        self.monitored += 1
        drifting = self.vs_reference.update(self._scores.normal(champion))
        if canary is not None and self._paired:
            drifting = self.vs_canary.update(self._diffs_normal.normal(champion - canary)) or drifting
        else:
            drifting = drifting or self.vs_canary.statistic > self.vs_canary.h
        if drifting and not self._drifting:
            self.alarms += 1
            if self.first_alarm_after is None:
                self.first_alarm_after, self.first_alarm_at = self.monitored, self.scores
        self._drifting = drifting
        if self.monitored % self.settings.every == 0:
            self._stats = self._window_statistics()

    def _freeze_reference(self) -> None:
        self._ref = np.sort(np.asarray(self._reference))
        self._scores = NormalScores(self._ref)
        self._paired = len(self._pairs) >= 2  # else the canary was silent: no paired test
        if self._paired:
            self._diffs_normal = NormalScores(np.asarray(self._pairs))
        self._edges = np.unique(np.quantile(self._ref, np.linspace(0, 1, self.settings.psi_bins + 1)))
        self._edges[0], self._edges[-1] = -np.inf, np.inf
        self._reference, self._pairs = [], []

    def _window_statistics(self) -> dict[str, float | None]:
        from scipy.stats import (  # imported by __init__ already
            ks_2samp,
            wasserstein_distance,
        )

        assert self._ref is not None  # set with the reference, before any champion score counts
        champion = np.asarray(self._champion)
        canary = np.asarray(self._canary) if len(self._canary) >= 10 else None
        out: dict[str, float | None] = {
            "ks_reference": float(ks_2samp(champion, self._ref).statistic),
            "psi_reference": psi(self._ref, champion, self._edges),
            "wasserstein_reference": float(wasserstein_distance(champion, self._ref)),
        }
        if canary is not None:
            out["ks_canary"] = float(ks_2samp(champion, canary).statistic)
            out["psi_canary"] = psi(canary, champion, self._edges)
            out["wasserstein_canary"] = float(wasserstein_distance(champion, canary))
        if self._diffs:
            out["paired_mean_diff"] = float(np.mean(self._diffs))
        return out

    # ------------------------------------------------------------------ reporting

    def report(self) -> DriftReport:
        direction = self.vs_reference.direction or self.vs_canary.direction
        return DriftReport(
            phase="monitoring" if self._ref is not None else "reference",
            scores=self.scores, monitored=self.monitored, drifting=self._drifting,
            direction=direction if self._drifting else 0, alarms=self.alarms,
            first_alarm_after=self.first_alarm_after, first_alarm_at=self.first_alarm_at,
            cusum_reference=self.vs_reference.statistic,
            cusum_canary=self.vs_canary.statistic, threshold=self.vs_reference.h, **self._stats,
        )
