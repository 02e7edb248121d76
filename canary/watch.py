"""Pairs the champion's and the canary's scores of each request and feeds a :class:`DriftMonitor`.

Scores arrive one model at a time and in any order; a request's pair is
complete when both have answered. A request whose partner never comes (the
canary failed, or was too slow) still counts for the champion alone once it
leaves the bounded buffer. Pure code: the rendezvous worker calls
:meth:`CanaryWatch.observe` for every score it reads.

>>> watch = CanaryWatch("forest", "baseline", DriftSettings(reference_size=3))
>>> for rid, (f, b) in enumerate([(0.9, 0.8), (0.2, 0.1), (0.5, 0.4), (0.7, 0.6)]):
...     watch.observe("baseline", str(rid), b)
...     watch.observe("forest", str(rid), f)
>>> report = watch.report()
>>> report.phase, report.scores, report.monitored
('monitoring', 4, 1)
"""

from __future__ import annotations

from collections import OrderedDict

from canary.drift import DriftMonitor, DriftReport, DriftSettings

__all__ = ["CanaryWatch"]


class CanaryWatch:
    def __init__(self, champion: str, canary: str, settings: DriftSettings = DriftSettings(),
                 max_unpaired: int = 20_000) -> None:
        self.champion, self.canary = champion, canary
        self.monitor = DriftMonitor(settings)
        self.max_unpaired = max_unpaired
        self._waiting: OrderedDict[str, tuple[float | None, float | None]] = OrderedDict()

    def observe(self, model: str, request_id: str, score: float | None) -> None:
        if model not in (self.champion, self.canary) or score is None:
            return
        champion, canary = self._waiting.pop(request_id, (None, None))
        if model == self.champion:
            champion = score
        else:
            canary = score
        if champion is not None and canary is not None:
            self.monitor.learn_one(champion, canary)
            return
        self._waiting[request_id] = (champion, canary)
        while len(self._waiting) > self.max_unpaired:
            _, (champion, canary) = self._waiting.popitem(last=False)
            self.monitor.learn_one(champion, canary)

    def report(self) -> DriftReport:
        return self.monitor.report()
