"""Turning outcomes, which arrive late, into rewards for the models that scored a request.

The router answers within milliseconds; the truth (a fraud confirmed, a click) may
come hours later. :class:`ScoreIndex` remembers each answered request's scores,
late ones included, for ``horizon_ms``; an outcome then credits every model that
scored the request (or only the chosen one, for rewards that depend on the answer
given, like revenue). An outcome for a request it no longer knows, or a second
outcome for one, is counted and ignored.

>>> rule = RewardRule("bernoulli", threshold=0.5)
>>> index = ScoreIndex(horizon_ms=60_000, max_entries=100)
>>> index.record("r1", {"m1": 0.9, "m2": 0.2}, chosen="m1", now_ms=0)
>>> status, observations = index.credit("r1", True, t_ms=5000, rule=rule, now_ms=5000)
>>> status, sorted((o.model, o.reward) for o in observations)
('credited', [('m1', 1.0), ('m2', 0.0)])
>>> index.credit("r1", True, t_ms=6000, rule=rule, now_ms=6000)[0]
'duplicate'
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from rendezvous.routing.bandit import Observation

__all__ = ["RewardRule", "ScoreIndex"]


@dataclass(frozen=True)
class RewardRule:
    """How a model's score and the outcome make its reward.

    - ``bernoulli``: the score is a decision (``score >= threshold`` means "positive");
      the reward is 1 when it matches the outcome (true, or >= 0.5), else 0.
    - ``gaussian`` with ``target: error``: the reward is minus the absolute error.
    - ``gaussian`` with ``target: outcome``: the reward is the outcome itself; it only
      makes sense for the chosen model, so use ``credit: chosen``.
    """

    kind: Literal["bernoulli", "gaussian"] = "bernoulli"
    threshold: float = 0.5
    target: Literal["error", "outcome"] = "error"
    credit: Literal["all", "chosen"] = "all"

    def reward(self, score: float, outcome: float | bool) -> float:
        if self.kind == "bernoulli":
            return 1.0 if (score >= self.threshold) == (float(outcome) >= 0.5) else 0.0
        if self.target == "error":
            return -abs(score - float(outcome))
        return float(outcome)


class ScoreIndex:
    """Answered requests' scores, until their outcome can no longer be expected."""

    def __init__(self, horizon_ms: float, max_entries: int) -> None:
        self.horizon_ms, self.max_entries = horizon_ms, max_entries
        # request id -> [recorded_ms, {model: score}, chosen model, credited]
        self._entries: OrderedDict[str, list[Any]] = OrderedDict()
        self._credited_early: OrderedDict[str, float] = OrderedDict()  # credited before we saw it (replay)

    def record(self, request_id: str, scores: dict[str, float], chosen: str | None, now_ms: float,
               versions: dict[str, str] | None = None) -> None:
        credited = self._credited_early.pop(request_id, None) is not None
        self._entries[request_id] = [now_ms, dict(scores), chosen, credited, dict(versions or {})]
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def add_late(self, request_id: str, model: str, score: float, version: str | None = None) -> None:
        entry = self._entries.get(request_id)
        if entry is not None and not entry[3]:
            entry[1].setdefault(model, score)
            if version is not None:
                entry[4].setdefault(model, version)

    def mark_credited(self, request_id: str, now_ms: float) -> None:
        """An outcome for this request was credited already (seen in the shared observations)."""
        entry = self._entries.get(request_id)
        if entry is not None:
            entry[3] = True
        else:
            self._credited_early[request_id] = now_ms
            while len(self._credited_early) > self.max_entries:
                self._credited_early.popitem(last=False)

    def scores(self, request_id: str) -> dict[str, float] | None:
        """The scores recorded for a request not yet credited (every model that scored it), or None."""
        entry = self._entries.get(request_id)
        return None if entry is None or entry[3] else dict(entry[1])

    def versions(self, request_id: str) -> dict[str, str]:
        """Which version of each model scored the request (as recorded; a late score's is not known)."""
        entry = self._entries.get(request_id)
        return dict(entry[4]) if entry is not None else {}

    def credit(
        self, request_id: str, outcome: float | bool, t_ms: float, rule: RewardRule, now_ms: float,
    ) -> tuple[Literal["credited", "duplicate", "unknown"], list[Observation]]:
        entry = self._entries.get(request_id)
        if entry is None:
            return ("duplicate" if request_id in self._credited_early else "unknown"), []
        if entry[3]:
            return "duplicate", []
        entry[3] = True
        _, scores, chosen, _, _ = entry
        if rule.credit == "chosen":
            # Only the returned answer's outcome is known; a default answer returned no model's
            # score, so the outcome says nothing about any model.
            models = [chosen] if chosen is not None else []
        else:
            models = list(scores)
        return "credited", [Observation(request_id, m, rule.reward(scores[m], outcome), t_ms)
                            for m in models if m in scores]

    def expire(self, now_ms: float) -> None:
        # both are in insertion (hence time) order: the oldest is first
        entries, early = self._entries, self._credited_early
        while entries and now_ms - next(iter(entries.values()))[0] >= self.horizon_ms:
            entries.popitem(last=False)
        while early and now_ms - next(iter(early.values())) >= self.horizon_ms:
            early.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
