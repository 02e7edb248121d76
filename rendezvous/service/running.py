"""Which models run, as far as one worker can tell: those that scored lately, and those whose presence
record is alive. A policy record naming a model outside it is refused (see ``PolicyStore.offer``).

>>> running = RunningModels(clock=lambda: 10_000.0, window_ms=5_000.0)
>>> running.names() is None  # nothing seen yet: it cannot tell
True
>>> running.scored("m1", 9_000.0); running.announced("m2", alive_until_ms=20_000.0); running.scored("old", 1_000.0)
>>> sorted(running.names())
['m1', 'm2']
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from rendezvous.kernel.clock import Clock, now_ms
from rendezvous.kernel.presence import MISSED_BEATS, Presence

__all__ = ["RunningModels"]


class RunningModels:
    """Model names with when each was last seen scoring, or until when its presence record counts as alive.

    At most ``max_models`` are kept (the longest unseen go first): without the stack's secret, anyone
    can write scores under any name."""

    def __init__(self, clock: Clock = now_ms, window_ms: float = 600_000.0, max_models: int = 10_000) -> None:
        self.clock, self.window_ms, self.max_models = clock, window_ms, max_models
        self._scored: OrderedDict[str, float] = OrderedDict()
        self._announced: dict[str, float] = {}

    def scored(self, model: str, now: float) -> None:
        self._scored[model] = now
        self._scored.move_to_end(model)
        if len(self._scored) > self.max_models:
            self._scored.popitem(last=False)

    def announced(self, model: str, alive_until_ms: float) -> None:
        if model in self._announced or len(self._announced) < self.max_models:
            self._announced[model] = max(alive_until_ms, self._announced.get(model, 0.0))

    def presence(self, present: Iterable[Presence]) -> None:
        for p in present:
            if p.role == "model":
                self.announced(p.name, p.at_ms + MISSED_BEATS * p.every_ms)  # as long as Presence.alive says

    def names(self) -> set[str] | None:
        """The models known to run now; None if this worker has seen no model at all (it cannot tell)."""
        if not self._scored and not self._announced:
            return None
        now = self.clock()
        return ({m for m, at in self._scored.items() if now - at < self.window_ms}
                | {m for m, until in self._announced.items() if until > now})
