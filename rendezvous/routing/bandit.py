"""What the router believes about each model's reward, learned from outcomes.

Every outcome credits every model that scored its request (the truth does not
depend on which answer was returned), so each model's posterior is fed by all
traffic, not only by the requests it was chosen for.

Forgetting is adaptive by default (:class:`Adaptive`): a model's posterior holds
every observation since its reward last changed, found by ADWIN (Bifet & Gavaldà,
2007), so a stationary stream settles and an abrupt change is followed within a few
hundred observations, with nothing to tune. It can instead be by *time*: an
observation's weight halves every ``half_life_s`` (or drops to zero outside a
sliding ``window_s``). Adaptive windows depend on the order observations come in;
every worker applies them in the bandit topic's order, so all hold the same posterior.

>>> import random
>>> learner = Learner(BetaBernoulli(alpha=1, beta=1), half_life_s=None)
>>> for t in range(100):
...     learner.observe("good", 1.0 if t % 10 else 0.0, t_ms=t)
...     learner.observe("bad", 1.0 if t % 2 else 0.0, t_ms=t)
>>> round(learner.mean("good", now_ms=100), 2), round(learner.mean("bad", now_ms=100), 2)
(0.89, 0.5)
>>> rng = random.Random(1)
>>> sum(learner.sample("good", 100, rng) > learner.sample("bad", 100, rng) for _ in range(1000)) > 990
True
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Observation", "RewardStats", "Forgetting", "Decay", "Window", "Adaptive", "Family", "BetaBernoulli", "NormalGamma",
    "Learner",
]


@dataclass(frozen=True)
class Observation:
    """One model's reward on one request, at the outcome's time (epoch ms)."""

    request_id: str
    model: str
    reward: float
    t_ms: float


@dataclass
class RewardStats:
    """Weighted count, sum and sum of squares of rewards, as of ``t_ms``."""

    n: float = 0.0
    total: float = 0.0
    squares: float = 0.0


class Forgetting(Protocol):
    def add(self, reward: float, t_ms: float) -> None: ...

    def stats(self, now_ms: float) -> RewardStats: ...


@dataclass
class Decay:
    """Exponential decay: weight 2^(-age / half_life). ``half_life_s=None`` never forgets."""

    half_life_s: float | None
    _stats: RewardStats = field(default_factory=RewardStats)
    _as_of_ms: float = -math.inf

    def _factor(self, dt_ms: float) -> float:
        return 1.0 if self.half_life_s is None else 2.0 ** (-dt_ms / (1000.0 * self.half_life_s))

    def _advance(self, t_ms: float) -> None:
        if t_ms > self._as_of_ms:
            if self._as_of_ms != -math.inf:
                f = self._factor(t_ms - self._as_of_ms)
                s = self._stats
                s.n, s.total, s.squares = s.n * f, s.total * f, s.squares * f
            self._as_of_ms = t_ms

    def add(self, reward: float, t_ms: float) -> None:
        self._advance(t_ms)
        w = self._factor(self._as_of_ms - t_ms)  # an older observation arrives already decayed
        s = self._stats
        s.n += w
        s.total += w * reward
        s.squares += w * reward * reward

    def stats(self, now_ms: float) -> RewardStats:
        self._advance(now_ms)
        return self._stats


@dataclass
class Window:
    """Only observations of the last ``window_s`` seconds count."""

    window_s: float
    _times: list[float] = field(default_factory=list)
    _rewards: list[float] = field(default_factory=list)
    _stats: RewardStats = field(default_factory=RewardStats)

    def add(self, reward: float, t_ms: float) -> None:
        i = bisect.bisect(self._times, t_ms)
        self._times.insert(i, t_ms)
        self._rewards.insert(i, reward)
        s = self._stats
        s.n, s.total, s.squares = s.n + 1, s.total + reward, s.squares + reward * reward

    def stats(self, now_ms: float) -> RewardStats:
        cut = bisect.bisect_left(self._times, now_ms - 1000.0 * self.window_s)
        if cut:
            s = self._stats
            for r in self._rewards[:cut]:
                s.n, s.total, s.squares = s.n - 1, s.total - r, s.squares - r * r
            del self._times[:cut], self._rewards[:cut]
        return self._stats


class Adaptive:
    """Every observation since the model's reward last changed: ADWIN's adaptive window.

    ADWIN (Bifet & Gavaldà, "Learning from time-changing data with adaptive windowing",
    SDM 2007) keeps the longest recent window whose two halves have, at confidence
    ``1 - delta``, the same mean, and drops the older part when they do not. The window
    is the evidence: it grows without bound while the reward is stationary (the posterior
    settles) and is cut at a change (the posterior follows it), with no half-life to
    tune. This is the "restart the arm on a detected change" family of piecewise-stationary
    bandits (e.g. Besson, Kaufmann, Maillard and Seznec, JMLR 2022), with ADWIN as the test.

    >>> a = Adaptive()
    >>> for i in range(4000):
    ...     a.add(1.0 if i % 10 else 0.0, t_ms=i)        # right 90% of the time ...
    >>> for i in range(4000, 6000):
    ...     a.add(1.0 if i % 10 < 6 else 0.0, t_ms=i)    # ... then 60%
    >>> s = a.stats(now_ms=6000)
    >>> a.changes >= 1, round(s.total / s.n, 1), s.n < 2500
    (True, 0.6, True)
    """

    def __init__(self, delta: float = 0.05) -> None:
        # river.drift.ADWIN wraps this class of river's Rust core; importing river.drift would load
        # river's datasets (about a second) in every process that compiles a policy. river is pinned,
        # and tests/test_learning.py checks that both agree.
        from river._river_rust.drift import AdaptiveWindowing

        self.delta = delta
        self._window = AdaptiveWindowing(delta, 32, 5, 5, 10)  # river's defaults but delta
        self._stats = RewardStats()
        self.changes = 0

    def add(self, reward: float, t_ms: float) -> None:
        if self._window.update(reward):
            self.changes += 1

    def stats(self, now_ms: float) -> RewardStats:
        w, s = self._window, self._stats
        s.n = float(w.get_width())
        s.total = w.get_total()
        s.squares = w.get_variance() + (s.total * s.total / s.n if s.n else 0.0)  # its variance is n times the mean's
        return s


class Family(Protocol):
    """A conjugate posterior family: draws and means from reward statistics."""

    def sample(self, stats: RewardStats, rng: random.Random) -> float: ...

    def mean(self, stats: RewardStats) -> float: ...


@dataclass(frozen=True)
class BetaBernoulli:
    """Rewards in {0, 1} (a decision right or wrong); Beta(alpha, beta) prior."""

    alpha: float = 1.0
    beta: float = 1.0

    def sample(self, stats: RewardStats, rng: random.Random) -> float:
        return rng.betavariate(self.alpha + stats.total, self.beta + max(stats.n - stats.total, 0.0))

    def mean(self, stats: RewardStats) -> float:
        return (self.alpha + stats.total) / (self.alpha + self.beta + stats.n)


@dataclass(frozen=True)
class NormalGamma:
    """Real-valued rewards (e.g. minus an error) with unknown mean and variance."""

    mean0: float = 0.0
    kappa0: float = 1.0  # how many observations the prior mean is worth
    a0: float = 1.0
    b0: float = 1.0

    def _posterior(self, s: RewardStats) -> tuple[float, float, float, float]:
        n = s.n
        xbar = s.total / n if n > 0 else 0.0
        kappa = self.kappa0 + n
        mu = (self.kappa0 * self.mean0 + s.total) / kappa
        spread = max(s.squares - n * xbar * xbar, 0.0)
        b = self.b0 + 0.5 * spread + self.kappa0 * n * (xbar - self.mean0) ** 2 / (2.0 * kappa)
        return mu, kappa, self.a0 + n / 2.0, b

    def sample(self, stats: RewardStats, rng: random.Random) -> float:
        mu, kappa, a, b = self._posterior(stats)
        precision = rng.gammavariate(a, 1.0 / b)
        return rng.gauss(mu, 1.0 / math.sqrt(kappa * precision))

    def mean(self, stats: RewardStats) -> float:
        return self._posterior(stats)[0]


class Learner:
    """One posterior per model, all of one family and one kind of forgetting: a sliding
    ``window_s``, else a ``half_life_s``, else adaptive with ``change_delta``, else none."""

    def __init__(self, family: Family, half_life_s: float | None = None, window_s: float | None = None,
                 change_delta: float | None = None) -> None:
        self.family, self.half_life_s, self.window_s, self.change_delta = family, half_life_s, window_s, change_delta
        self._by_model: dict[str, Forgetting] = {}
        self.observations = 0

    def _stats(self, model: str) -> Forgetting:
        stats = self._by_model.get(model)
        if stats is None:
            stats = self._by_model[model] = (
                Window(self.window_s) if self.window_s else Decay(self.half_life_s) if self.half_life_s
                else Adaptive(self.change_delta) if self.change_delta else Decay(None))
        return stats

    def changes(self, model: str) -> int:
        """How many changes of ``model``'s reward adaptive forgetting has detected (0 for the others)."""
        stats = self._by_model.get(model)
        return stats.changes if isinstance(stats, Adaptive) else 0

    def observe(self, model: str, reward: float, t_ms: float) -> None:
        self._stats(model).add(reward, t_ms)
        self.observations += 1

    def observe_all(self, observations: Iterable[Observation]) -> None:
        for o in observations:
            self.observe(o.model, o.reward, o.t_ms)

    def sample(self, model: str, now_ms: float, rng: random.Random) -> float:
        return self.family.sample(self._stats(model).stats(now_ms), rng)

    def mean(self, model: str, now_ms: float) -> float:
        return self.family.mean(self._stats(model).stats(now_ms))

    def weight(self, model: str, now_ms: float) -> float:
        """How much evidence (decayed observation count) the posterior holds."""
        return self._stats(model).stats(now_ms).n
