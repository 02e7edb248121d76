"""A two-sided CUSUM on standardized values: the sequential test behind every drift alarm.

A fresh p-value every second would cry wolf all day on a long stream. CUSUM
accumulates evidence instead: each value ``z`` (standard normal while nothing
has changed) adds ``z - k`` to the upper sum and ``-z - k`` to the lower one,
each floored at zero; an alarm is raised when either passes ``h``. ``k`` is
half the shift it is tuned for (in standard deviations); ``h`` follows from
how rarely it may cry wolf, its in-control average run length (ARL0), through
Siegmund's approximation. For shift ``d`` the expected delay is about
``h / (d - k)`` values.

>>> chart = Cusum.for_false_alarms(shift_sd=0.5, false_alarms=0.01, per=100_000)
>>> round(chart.h, 1)
28.3
>>> any(chart.update(0.0) for _ in range(10_000))   # in control: no alarm
False
>>> next(i for i in range(1, 500) if chart.update(1.0))  # a 1-sd shift: found in ~h/(1-k) values
38
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["siegmund_arl", "threshold_for", "Cusum"]


def siegmund_arl(k: float, h: float, mean: float = 0.0) -> float:
    """Average run length of a one-sided CUSUM with reference ``k``, threshold ``h``, for N(mean, 1) values."""
    delta, b = mean - k, h + 1.166
    if abs(delta) < 1e-9:
        return b * b
    if -2 * delta * b > 700:  # beyond float range: as good as never
        return math.inf
    return (math.exp(-2 * delta * b) + 2 * delta * b - 1) / (2 * delta * delta)


def threshold_for(k: float, arl0: float) -> float:
    """The ``h`` whose one-sided in-control ARL is ``arl0``."""
    from scipy.optimize import brentq  # slow to import; CLIs import this module
    high = 1.0
    while siegmund_arl(k, high) < arl0:  # bracket the root; the ARL grows like exp(2kh)
        high *= 2
    return float(brentq(lambda h: siegmund_arl(k, h) - arl0, 0.0, high))


@dataclass
class Cusum:
    k: float  # reference value: half the shift tuned for, in sd
    h: float  # decision threshold
    upper: float = 0.0
    lower: float = 0.0
    cap_factor: float = 2.0  # sums stop growing at cap_factor * h, so a drift that ends is noticed soon

    @classmethod
    def for_false_alarms(cls, shift_sd: float, false_alarms: float, per: int, slack_sd: float = 0.0) -> Cusum:
        """Tuned to find a ``shift_sd`` shift fast while alarming on at most a ``false_alarms``
        share of in-control streams of ``per`` values (two sides: each gets half).

        ``slack_sd``: how far off "in control" may be (e.g. estimated from a sample);
        the threshold is set as if the values were already that far off."""
        arl0 = 2 * per / false_alarms  # P(alarm within n) ~ n / ARL0, for ARL0 >> n
        k = shift_sd / 2
        return cls(k, threshold_for(max(k - slack_sd, k / 4), arl0))

    def update(self, z: float) -> bool:
        """Take one standardized value; True while the evidence of a shift is above threshold."""
        cap = self.cap_factor * self.h
        self.upper = min(max(0.0, self.upper + z - self.k), cap)
        self.lower = min(max(0.0, self.lower - z - self.k), cap)
        return self.statistic > self.h

    @property
    def statistic(self) -> float:
        return max(self.upper, self.lower)

    @property
    def direction(self) -> int:
        """+1 when values run high, -1 when low, 0 when neither sum is above threshold."""
        if self.statistic <= self.h:
            return 0
        return 1 if self.upper >= self.lower else -1

    def reset(self) -> None:
        self.upper = self.lower = 0.0
