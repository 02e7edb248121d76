"""How good each model is on the outcomes that arrived, over a sliding window. Pure.

Every model that scored a request is judged on its outcome, whichever model was
returned (its score is known either way), so a shadow or a ramped model is
measured on the same requests as the champion: "delta versus champion" before
it is trusted. Outcomes are labels (``True``/``False`` or 1/0) or numbers.

>>> q = ModelQuality(window=100, min_per_class=2)
>>> for score, label in [(0.9, True), (0.8, True), (0.3, False), (0.6, False), (0.5, True)]:
...     q.learn_one("m", score, label)
>>> round(q.roc_auc("m"), 3)
0.833
>>> q.roc_auc("never-seen") is None
True
"""

from __future__ import annotations

from collections import deque

import numpy as np

__all__ = ["LABEL_MEASURES", "NUMERIC_MEASURES", "ModelQuality", "roc_auc"]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a positive outranks a negative (ties count half): Mann-Whitney U / (n+ n-).

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    0.75
    """
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties: each run of equal scores gets the mean of its positions
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    positives = labels.astype(bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


#: What each kind of outcome is judged by (the ``measure`` label of ``rendezvous_model_quality``).
LABEL_MEASURES = ("accuracy", "log_loss", "brier", "roc_auc")
NUMERIC_MEASURES = ("mae", "rmse")
#: Scores are clipped this far from 0 and 1 before a log loss: one confident miss costs ~13.8, not infinity.
_EPS = 1e-6


class ModelQuality:
    """Each model's quality on its last ``window`` outcomes.

    Labels (``True``/``False``, 1/0): accuracy (a score at or above ``threshold`` predicts a positive,
    the policy's ``learning.reward.threshold``), log loss, Brier score and ROC AUC (once the window holds
    ``min_per_class`` of each class). Numeric outcomes: mean absolute and root mean squared error of the
    score. A window that holds any numeric outcome is judged as numeric.

    >>> q = ModelQuality(window=100, min_per_class=2)
    >>> for score, label in [(0.9, True), (0.8, True), (0.3, False), (0.6, False), (0.2, True)]:
    ...     q.learn_one("m", score, label)
    >>> {k: round(v, 3) for k, v in q.measures("m").items()}
    {'accuracy': 0.6, 'log_loss': 0.642, 'brier': 0.228, 'roc_auc': 0.667}
    >>> q.learn_one("r", 2.0, 2.5); q.learn_one("r", 1.0, 0.0)
    >>> q.measures("r")
    {'mae': 0.75, 'rmse': 0.7905694150420949}

    Given its version, an outcome also judges ``model@version`` (a version swap, judged version by version):

    >>> q.learn_one("r", 3.0, 2.0, version="2"); q.versions(), q.outcomes("r@2"), q.outcomes("r")
    ([('r', '2')], 1, 3)
    """

    def __init__(self, window: int = 5000, min_per_class: int = 20, threshold: float = 0.5) -> None:
        self.window, self.min_per_class, self.threshold = window, min_per_class, threshold
        # keyed by model, and by "model@version" where the version is known: a swap is judged version by version
        self._seen: dict[str, deque[tuple[float, float]]] = {}

    def learn_one(self, model: str, score: float, outcome: float | bool, version: str | None = None) -> None:
        for key in (model, f"{model}@{version}") if version else (model,):
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = deque(maxlen=self.window)
            seen.append((float(score), float(outcome)))

    def outcomes(self, model: str) -> int:
        """How many outcomes judge ``model`` (any version), or ``model@version``."""
        return len(self._seen.get(model, ()))

    def versions(self) -> list[tuple[str, str]]:
        """Every ``(model, version)`` judged so far."""
        pairs = (key.split("@", 1) for key in self._seen if "@" in key)
        return sorted((model, version) for model, version in pairs)

    def _arrays(self, model: str) -> tuple[np.ndarray, np.ndarray] | None:
        seen = self._seen.get(model)
        if not seen:
            return None
        return (np.fromiter((s for s, _ in seen), float, len(seen)), np.fromiter((y for _, y in seen), float, len(seen)))

    def roc_auc(self, model: str) -> float | None:
        """None until the window holds ``min_per_class`` positives and negatives (and only labels)."""
        got = self._arrays(model)
        if got is None or not _labels(got[1]):
            return None
        scores, outcomes = got
        labels = outcomes.astype(bool)
        if min(labels.sum(), (~labels).sum()) < self.min_per_class:
            return None
        return roc_auc(scores, labels)

    def measures(self, model: str) -> dict[str, float]:
        """Every measure that is defined for the model's window (none before its first outcome)."""
        got = self._arrays(model)
        if got is None:
            return {}
        scores, outcomes = got
        if not _labels(outcomes):
            error = scores - outcomes
            return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error ** 2).mean()))}
        p = np.clip(scores, _EPS, 1 - _EPS)
        found = {"accuracy": float(((scores >= self.threshold) == (outcomes == 1)).mean()),
                 "log_loss": float(-(outcomes * np.log(p) + (1 - outcomes) * np.log(1 - p)).mean()),
                 "brier": float(((scores - outcomes) ** 2).mean())}
        auc = self.roc_auc(model)
        if auc is not None:
            found["roc_auc"] = auc
        return found

    def report(self) -> dict[str, dict[str, float | int | None]]:
        """Per model (any version) and per ``model@version``."""
        return {m: {"roc_auc": self.roc_auc(m), "outcomes": self.outcomes(m), **self.measures(m)}
                for m in sorted(self._seen)}


def _labels(outcomes: np.ndarray) -> bool:
    return bool(np.isin(outcomes, (0.0, 1.0)).all())
