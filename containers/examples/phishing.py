"""Three example models for river's bundled Phishing data set (1,250 labelled web pages).

- ``baseline``: river's online logistic regression. Fast (~10 µs a request).
- ``forest``: scikit-learn random forest. Better, and slower (milliseconds a call).
- ``boosted``: scikit-learn gradient boosting, the most accurate, served through
  :class:`Stalling`, which now and then holds a request for hundreds of
  milliseconds, as a heavy model's garbage collections and cold caches do. It
  is what makes the fallback rules matter in the demo.

Artifacts are pickles of the wrapper objects below, made by
``python -m containers.examples.train``; the model cards beside them record
their hashes, the data's hash, hyper-parameters and held-out metrics.

>>> rows = dataset()
>>> len(rows), sorted(rows[0][0])[:2]
(1250, ['age_of_domain', 'anchor_from_other_domain'])
"""

from __future__ import annotations

import pickle
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from rendezvous.tools.data import (
    phishing_rows as dataset,  # noqa: F401 - the rows these models learn from
)

FEATURES = (
    "empty_server_form_handler", "popup_window", "https", "request_from_other_domain",
    "anchor_from_other_domain", "is_popular", "long_url", "age_of_domain", "ip_in_url",
)


class RiverClassifier:
    """A river classifier scored one request at a time."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict_one(self, features: dict[str, Any]) -> float:
        return float(self.model.predict_proba_one(features).get(True, 0.0))


class SklearnClassifier:
    """A scikit-learn classifier over :data:`FEATURES`, scored a batch at a time."""

    def __init__(self, estimator: Any, features: tuple[str, ...] = FEATURES) -> None:
        self.estimator, self.features = estimator, features

    def _matrix(self, batch: list[dict[str, Any]]) -> np.ndarray:
        try:
            return np.array([[float(x[f]) for f in self.features] for x in batch], dtype=np.float64)
        except KeyError as exc:
            raise ValueError(f"missing feature {exc.args[0]!r}") from None

    def predict_many(self, batch: list[dict[str, Any]]) -> list[float]:
        return self.estimator.predict_proba(self._matrix(batch))[:, 1].tolist()

    def predict_one(self, features: dict[str, Any]) -> float:
        return self.predict_many([features])[0]


class Stalling:
    """Wraps a model; with probability ``stall_probability`` a call first stalls ``stall_ms``.

    Seeded, so a run's stalls are reproducible.
    """

    def __init__(self, model: Any, stall_probability: float, stall_ms: float, seed: int = 7) -> None:
        self.model, self.p, self.stall_s = model, stall_probability, stall_ms / 1000.0
        self._rng = random.Random(seed)

    def predict_one(self, features: dict[str, Any]) -> float:
        if self._rng.random() < self.p:
            time.sleep(self.stall_s)
        return self.model.predict_one(features)


def load_artifact(artifact: Path | None, stall_probability: float = 0.0, stall_ms: float = 0.0, seed: int = 7) -> Any:
    """Entry point named in the example specs: unpickle a model, optionally make it stall."""
    if artifact is None:
        raise ValueError("the phishing examples need an artifact")
    with open(artifact, "rb") as f:
        model = pickle.load(f)  # the spec pins the artifact's hash before we get here
    return Stalling(model, stall_probability, stall_ms, seed) if stall_probability > 0 else model
