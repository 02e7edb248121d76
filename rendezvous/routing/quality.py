"""How good each model is on the outcomes that arrived: ROC AUC over a sliding window. Pure.

Every model that scored a request is judged on its outcome, whichever model was
returned (its score is known either way), so a shadow or a ramped model is
measured on the same requests as the champion: "delta versus champion" before
it is trusted. Outcomes are labels: ``True``/``False`` or 1/0.

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

__all__ = ["ModelQuality", "roc_auc"]


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


class ModelQuality:
    """ROC AUC per model over its last ``window`` labelled scores."""

    def __init__(self, window: int = 5000, min_per_class: int = 20) -> None:
        self.window, self.min_per_class = window, min_per_class
        self._seen: dict[str, deque[tuple[float, bool]]] = {}

    def learn_one(self, model: str, score: float, label: bool) -> None:
        seen = self._seen.get(model)
        if seen is None:
            seen = self._seen[model] = deque(maxlen=self.window)
        seen.append((float(score), bool(label)))

    def outcomes(self, model: str) -> int:
        return len(self._seen.get(model, ()))

    def roc_auc(self, model: str) -> float | None:
        """None until the window holds ``min_per_class`` positives and negatives."""
        seen = self._seen.get(model)
        if not seen:
            return None
        scores = np.fromiter((s for s, _ in seen), float, len(seen))
        labels = np.fromiter((y for _, y in seen), bool, len(seen))
        if min(labels.sum(), (~labels).sum()) < self.min_per_class:
            return None
        return roc_auc(scores, labels)

    def report(self) -> dict[str, dict[str, float | int | None]]:
        return {m: {"roc_auc": self.roc_auc(m), "outcomes": self.outcomes(m)} for m in sorted(self._seen)}

    @staticmethod
    def label(outcome: float | bool) -> bool | None:
        """An outcome as a label, or None if it is not one (a Gaussian outcome has no ROC curve)."""
        if isinstance(outcome, bool):
            return outcome
        if outcome in (0, 1):
            return bool(outcome)
        return None
