"""Synthetic models for benchmarks and for testing a policy's fallback rules.

``constant`` costs next to nothing, so what a benchmark measures is the platform.
``scripted`` answers as each request tells it to, which makes a fallback chain's
timing testable against real processes: a request whose features hold
``{"<model>_delay_ms": 40}`` is answered by ``<model>`` after 40 ms, and one with
``{"<model>_fail": true}`` makes it fail. ``hungry`` holds a given amount of
memory, to show what a container's memory limit does to a model that exceeds it.

>>> build(None).predict_many([{}, {}])
[0.5, 0.5]
>>> m = scripted(None, name="m2", score=0.7)
>>> m.predict_one({"m2_delay_ms": 1})
0.7
>>> m.predict_one({"m2_fail": True})
Traceback (most recent call last):
...
RuntimeError: m2 was told to fail
>>> scripted(None, name="m2", score=0.7, batched=True).predict_many([{}, {"m2_score": 0.1}])
[0.7, 0.1]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


class Constant:
    def __init__(self, score: float) -> None:
        self.score = score

    def predict_one(self, features: dict[str, Any]) -> float:
        return self.score

    def predict_many(self, batch: list[dict[str, Any]]) -> list[float]:
        return [self.score] * len(batch)


class Scripted:
    """Sleeps and fails as each request's features say (scored one request at a time)."""

    def __init__(self, name: str, score: float, delay_ms: float) -> None:
        self.name, self.score, self.delay_ms = name, score, delay_ms

    def predict_one(self, features: dict[str, Any]) -> float:
        delay = features.get(f"{self.name}_delay_ms", self.delay_ms)
        if delay:
            time.sleep(float(delay) / 1000.0)
        if features.get(f"{self.name}_fail"):
            raise RuntimeError(f"{self.name} was told to fail")
        return float(features.get(f"{self.name}_score", self.score))


def build(artifact: Path | None, score: float = 0.5) -> Constant:
    return Constant(score)


class ScriptedBatches(Scripted):
    """Scores whole batches; a batch holding one request told to fail fails as a whole, as a real
    vectorised model does (the runner then scores that batch's requests one by one)."""

    def predict_many(self, batch: list[dict[str, Any]]) -> list[float]:
        if any(features.get(f"{self.name}_fail") for features in batch):
            raise RuntimeError(f"{self.name} was told to fail (one of {len(batch)} requests)")
        return [float(features.get(f"{self.name}_score", self.score)) for features in batch]


def scripted(artifact: Path | None, name: str, score: float = 0.5, delay_ms: float = 0.0,
             batched: bool = False) -> Scripted:
    return (ScriptedBatches if batched else Scripted)(name, score, delay_ms)


class Hungry(Constant):
    """Holds ``megabytes`` of touched memory for as long as it lives."""

    def __init__(self, score: float, megabytes: int) -> None:
        super().__init__(score)
        self.ballast = bytearray(megabytes << 20)
        for i in range(0, len(self.ballast), 4096):  # touch every page, so it is resident
            self.ballast[i] = 1


def hungry(artifact: Path | None, megabytes: int = 256, score: float = 0.5) -> Hungry:
    return Hungry(score, megabytes)
