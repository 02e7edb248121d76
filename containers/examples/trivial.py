"""A trivial model for benchmarks: costs next to nothing, so what is measured is the platform.

>>> build(None).predict_one({"a": 1.0})
0.5
>>> build(None, score=0.25).predict_many([{}, {}])
[0.25, 0.25]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Constant:
    def __init__(self, score: float) -> None:
        self.score = score

    def predict_one(self, features: dict[str, Any]) -> float:
        return self.score

    def predict_many(self, batch: list[dict[str, Any]]) -> list[float]:
        return [self.score] * len(batch)


def build(artifact: Path | None, score: float = 0.5) -> Constant:
    return Constant(score)
