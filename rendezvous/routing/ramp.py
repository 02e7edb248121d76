"""Ramping a new model up, and rolling it back when it misbehaves.

A ramped model is preferred for a capped share of requests that rises by steps
from the moment its policy version was applied, so every worker computes the
same share from the same clock. Meanwhile its latency and its disagreement with
the champion (and the canary, if the policy names one) are watched over the last
``window`` requests; when one of them passes its limit, :meth:`RampMonitor.verdict`
says why, and the caller rolls the model back to shadow by publishing a new
policy version. When it has held its full share for a step within every limit, and
the outcomes that arrived judge it no worse than the champion,
:meth:`RampMonitor.promotion` says so, and the caller makes it the champion.

>>> ramp = RampMonitor("new", RampSchedule(start=0.05, step=0.1, every_s=60, max_share=0.3),
...                    RampLimits(p99_latency_ms=50, min_samples=3), applied_ms=0, champion="old")
>>> [ramp.share(t * 1000) for t in (0, 59, 60, 150, 10_000)]
[0.05, 0.05, 0.15, 0.25, 0.3]
>>> for latency in (10, 12, 200):
...     ramp.observe({"new": (0.9, latency), "old": (0.8, 5)}, decision_ms=100, preferred=True)
>>> ramp.verdict()
'p99 latency 200.0 ms > limit 50 ms over the last 3 requests'
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from rendezvous.routing.quality import ModelQuality

__all__ = ["RampSchedule", "RampLimits", "RampMonitor", "HIGHER_IS_BETTER"]


@dataclass(frozen=True)
class RampSchedule:
    start: float = 0.01
    step: float = 0.05
    every_s: float = 60.0
    max_share: float = 0.5

    def full_share_held_ms(self, applied_ms: float) -> float:
        """When the share has been at ``max_share`` for one step (``every_s``) after it got there.

        >>> RampSchedule(start=0.1, step=0.2, every_s=60, max_share=0.5).full_share_held_ms(0)
        180000.0
        """
        steps = math.ceil(round((self.max_share - self.start) / self.step, 9)) if self.step > 0 else 0
        return applied_ms + 1000.0 * self.every_s * (max(steps, 0) + 1)


@dataclass(frozen=True)
class RampLimits:
    p99_latency_ms: float | None = None  # of the ramped model's scores, from the request's timestamp
    max_disagreement: float | None = None  # share of requests it decides differently from the champion
    max_canary_disagreement: float | None = None  # the same, against the canary
    threshold: float = 0.5  # a score at or above it is a "positive" decision
    min_samples: int = 50
    window: int = 1000
    min_outcomes: int = 200  # outcomes each of the two needs before their quality is compared
    #: ``(measure, limit)``: roll back when the measure is worse than the champion's by more than the limit.
    max_worse: tuple[tuple[str, float], ...] = ()
    promote: bool = False  # promote once the full share was held within the limits (see RampMonitor.promotion)


class RampMonitor:
    def __init__(self, model: str, schedule: RampSchedule, limits: RampLimits, applied_ms: float,
                 champion: str, canary: str | None = None) -> None:
        self.model, self.schedule, self.limits = model, schedule, limits
        self.applied_ms, self.champion, self.canary = applied_ms, champion, canary
        self._latency: deque[float] = deque(maxlen=limits.window)
        self._vs_champion: deque[bool] = deque(maxlen=limits.window)
        self._vs_canary: deque[bool] = deque(maxlen=limits.window)
        self.halted: str | None = None  # why the ramp was stopped; its share is 0 from then on

    def halt(self, why: str) -> None:
        self.halted = why

    def share(self, now_ms: float) -> float:
        if self.halted:
            return 0.0
        s = self.schedule
        steps = max(now_ms - self.applied_ms, 0.0) // (1000.0 * s.every_s)
        return round(min(s.start + steps * s.step, s.max_share), 6)

    def observe(self, scores: dict[str, tuple[float | None, float]], decision_ms: float, preferred: bool) -> None:
        """Take in one decided request: model -> (score or None if failed, arrival ms after t0).

        Latency counts only when the ramped model was preferred: then an answer that
        was not in by the decision missed its budget (counted as infinite). Otherwise
        the answer came from another model, and this one's score may simply be later.
        """
        mine = scores.get(self.model)
        if preferred:
            self._latency.append(mine[1] if mine is not None and mine[0] is not None else math.inf)
        if mine is None or mine[0] is None:
            return
        t = self.limits.threshold
        for other, record in ((self.champion, self._vs_champion), (self.canary, self._vs_canary)):
            theirs = scores.get(other) if other else None
            if theirs is not None and theirs[0] is not None:
                record.append((mine[0] >= t) != (theirs[0] >= t))

    def verdict(self, quality: ModelQuality | None = None) -> str | None:
        """Why the ramp must stop, or None while it is within its limits (or already halted).

        ``quality`` (each model's measures on the outcomes) is needed for ``max_worse``.
        """
        if self.halted:
            return None
        lim = self.limits
        if lim.max_worse and quality is not None:
            worse = self._worse_than_champion(quality)
            if worse:
                return worse
        n = len(self._latency)
        if lim.p99_latency_ms is not None and n >= lim.min_samples:
            # Nearest rank, so that "never answered" (infinite) values need no interpolating.
            p99 = sorted(self._latency)[max(math.ceil(0.99 * n) - 1, 0)]
            if p99 > lim.p99_latency_ms:
                shown = "not answered in time" if math.isinf(p99) else f"{p99:.1f} ms"
                return f"p99 latency {shown} > limit {lim.p99_latency_ms:g} ms over the last {n} requests"
        for limit, record, who in ((lim.max_disagreement, self._vs_champion, f"champion {self.champion}"),
                                   (lim.max_canary_disagreement, self._vs_canary, f"canary {self.canary}")):
            if limit is not None and len(record) >= lim.min_samples:
                rate = sum(record) / len(record)
                if rate > limit:
                    return f"disagrees with the {who} on {rate:.1%} of requests > limit {limit:.1%}"
        return None

    def promotion(self, now_ms: float, quality: ModelQuality | None) -> str | None:
        """Why the ramped model may now replace the champion, or None.

        Like Flagger's canary analysis: the schedule has run to ``max_share`` and held it for one
        step, :meth:`verdict` finds nothing wrong, and both models have ``min_outcomes`` outcomes,
        so "within the limits" was judged on the truth, not assumed for lack of it.
        """
        lim = self.limits
        if not lim.promote or self.halted or quality is None or now_ms < self.schedule.full_share_held_ms(
                self.applied_ms):
            return None
        outcomes = min(quality.outcomes(self.model), quality.outcomes(self.champion))
        if outcomes < lim.min_outcomes or self.verdict(quality) is not None:
            return None
        mine, theirs = quality.measures(self.model), quality.measures(self.champion)
        shown = ", ".join(f"{m} {mine[m]:.3f} vs {theirs[m]:.3f}" for m in ("accuracy", "roc_auc", "rmse")
                          if m in mine and m in theirs)
        return (f"held {self.schedule.max_share:.0%} of requests within its limits; on {outcomes} outcomes "
                f"not worse than champion {self.champion} ({shown or 'no measure defined'})")

    def _worse_than_champion(self, quality: ModelQuality) -> str | None:
        """The first measure of ``max_worse`` on which the ramped model trails the champion by more than its limit."""
        outcomes = min(quality.outcomes(self.model), quality.outcomes(self.champion))
        if outcomes < self.limits.min_outcomes:
            return None
        mine, theirs = quality.measures(self.model), quality.measures(self.champion)
        for measure, limit in self.limits.max_worse:
            if measure not in mine or measure not in theirs:
                continue  # not defined for these outcomes (AUC needs both classes; MAE numeric ones)
            lower_is_worse = measure in HIGHER_IS_BETTER
            by = theirs[measure] - mine[measure] if lower_is_worse else mine[measure] - theirs[measure]
            if by > limit:
                return (f"{measure} {mine[measure]:.3f} is worse than champion {self.champion}'s "
                        f"{theirs[measure]:.3f} by more than {limit:g} over {outcomes} outcomes")
        return None


#: Quality measures where more is better; for the others (losses and errors), less is.
HIGHER_IS_BETTER = frozenset({"accuracy", "roc_auc"})
