"""The one wall clock of the system, in epoch milliseconds, so it can be injected.

Kafka timestamps are epoch milliseconds, so every component that compares its
time with a record's uses this clock. Code that decides (``rendezvous.routing``)
takes a ``Clock`` argument instead of calling it, which is what lets the tests
drive it.

>>> clock = FixedClock(1000.0)
>>> clock(), clock.advance(5), clock()
(1000.0, None, 1005.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "now_ms", "FixedClock"]

#: A source of the current time in epoch milliseconds.
Clock = Callable[[], float]


def now_ms() -> float:
    """The wall clock in epoch milliseconds (the unit of Kafka timestamps)."""
    return time.time() * 1000.0


class FixedClock:
    """A clock that moves only when told to, for tests and simulations."""

    def __init__(self, start_ms: float = 0.0) -> None:
        self.now = start_ms

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms
