"""Train the three example models and write their artifacts and model cards.

    python -m containers.examples.train [OUT_DIR]

Deterministic: the same library versions give a model with identical predictions
(the tests check it). Pickle bytes can still differ between runs, as pickle
shares repeated objects by identity, so a model's identity is its artifact's
hash, recorded in its card when the artifact was made.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from containers.examples.phishing import (
    FEATURES,
    RiverClassifier,
    SklearnClassifier,
    dataset,
)

TRAIN_ROWS = 1000  # rows 0..999 train, 1000..1249 are held out for the card's metrics
ARTIFACTS = Path(__file__).parent / "artifacts"


def _data_sha256(rows: list[tuple[dict[str, float], bool]]) -> str:
    canonical = json.dumps([[[x[f] for f in FEATURES], y] for x, y in rows], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _metrics(model: Any, rows: list[tuple[dict[str, float], bool]]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    y = [label for _, label in rows]
    p = [model.predict_one(x) for x, _ in rows]
    return {
        "roc_auc": round(roc_auc_score(y, p), 4),
        "accuracy": round(accuracy_score(y, [v > 0.5 for v in p]), 4),
        "log_loss": round(log_loss(y, p, labels=[False, True]), 4),
    }


def _build(name: str, train: list[tuple[dict[str, float], bool]]) -> tuple[Any, dict[str, Any], str]:
    if name == "baseline":
        from river import compose, linear_model, preprocessing

        pipeline = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
        for x, y in train:
            pipeline.learn_one(x, y)
        return RiverClassifier(pipeline), {"scaler": "StandardScaler", "optimizer": "SGD lr=0.01", "l2": 0.0}, "river"
    import numpy as np
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    X = np.array([[x[f] for f in FEATURES] for x, _ in train])
    y = np.array([label for _, label in train])
    if name == "forest":
        params = {"n_estimators": 40, "max_depth": 7, "random_state": 0, "n_jobs": 1}
        estimator = RandomForestClassifier(**params).fit(X, y)
    else:
        params = {"n_estimators": 150, "max_depth": 3, "learning_rate": 0.1, "random_state": 0}
        estimator = GradientBoostingClassifier(**params).fit(X, y)
    return SklearnClassifier(estimator), params, "scikit-learn"


def train_all(out: Path = ARTIFACTS) -> dict[str, dict[str, Any]]:
    rows = dataset()
    train, holdout = rows[:TRAIN_ROWS], rows[TRAIN_ROWS:]
    out.mkdir(parents=True, exist_ok=True)
    cards = {}
    for name in ("baseline", "forest", "boosted"):
        model, params, framework = _build(name, train)
        blob = pickle.dumps(model, protocol=5)
        (out / f"{name}.pkl").write_bytes(blob)
        card = {
            "name": name,
            "artifact": f"{name}.pkl",
            "artifact_sha256": hashlib.sha256(blob).hexdigest(),
            "framework": f"{framework}=={version(framework)}",
            "training_data": {
                "reference": f"river.datasets.Phishing (river=={version('river')}), rows 0-{TRAIN_ROWS - 1}",
                "rows": len(train),
                "sha256": _data_sha256(train),
            },
            "hyperparameters": params,
            "metrics": {"holdout": f"rows {TRAIN_ROWS}-{len(rows) - 1}", **_metrics(model, holdout)},
            "trained_by": "python -m containers.examples.train",
        }
        (out / f"{name}.card.json").write_text(json.dumps(card, indent=2) + "\n")
        cards[name] = card
    return cards


if __name__ == "__main__":
    for name, card in train_all(Path(sys.argv[1]) if len(sys.argv) > 1 else ARTIFACTS).items():
        print(f"{name:9s} {card['artifact_sha256'][:12]}  {card['metrics']}")
