"""A run's metrics over time, from either of two sources, for the report's charts.

A :class:`Timeline` answers three questions about one metric family, each as
``{label values: [(epoch seconds, value), ...]}``, summed over the labels not asked for:

- :meth:`~Timeline.gauge`: its value over time;
- :meth:`~Timeline.rate`: a counter's increase per second;
- :meth:`~Timeline.quantile`: a histogram's quantile over each interval.

:class:`Scrapes` holds snapshots of a service's ``/metrics`` text taken during a
run (``rendezvous demo`` scrapes its worker every second); :class:`PrometheusRange`
asks a Prometheus server the same three questions in PromQL (a live stack's
``rendezvous report``). Quantiles interpolate within buckets, as Prometheus's
``histogram_quantile`` does.

>>> page = '''# TYPE rendezvous_results counter
... rendezvous_results_total{model="m1",reason="preferred"} %d
... rendezvous_results_total{model="m2",reason="fallback"} %d
... # TYPE rendezvous_result_latency_seconds histogram
... rendezvous_result_latency_seconds_bucket{le="0.01"} %d
... rendezvous_result_latency_seconds_bucket{le="0.1"} %d
... rendezvous_result_latency_seconds_bucket{le="+Inf"} %d
... '''
>>> scrapes = Scrapes()
>>> scrapes.add(100.0, page % (0, 0, 0, 0, 0))
>>> scrapes.add(102.0, page % (30, 10, 20, 40, 40))
>>> scrapes.rate("rendezvous_results", ["model"])
{('m1',): [(102.0, 15.0)], ('m2',): [(102.0, 5.0)]}
>>> scrapes.quantile("rendezvous_result_latency_seconds", 0.5)
[(102.0, 0.01)]
>>> scrapes.gauge("rendezvous_results_total", [])
{(): [(100.0, 0.0), (102.0, 40.0)]}
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

from rendezvous.kernel.errors import OperationsError

__all__ = ["PrometheusRange", "Scraper", "Scrapes", "Series", "Timeline", "TimelineError"]

#: ``{label values: [(epoch seconds, value), ...]}``, points in time order.
Series = dict[tuple[str, ...], list[tuple[float, float]]]


class TimelineError(OperationsError):
    """A source could not be read (a Prometheus that does not answer, or refuses a query)."""


class Timeline(Protocol):
    @property
    def start_s(self) -> float: ...

    @property
    def end_s(self) -> float: ...

    def gauge(self, name: str, by: Sequence[str]) -> Series: ...

    def rate(self, name: str, by: Sequence[str]) -> Series: ...

    def quantile(self, name: str, q: float) -> list[tuple[float, float]]: ...


class Scrapes:
    """Snapshots of one ``/metrics`` page, and the three questions answered from them."""

    def __init__(self) -> None:
        #: per snapshot: its time and ``{(sample name, sorted labels): value}``
        self.snapshots: list[tuple[float, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = []

    def add(self, at_s: float, text: str) -> None:
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        self.snapshots.append((at_s, samples))

    def __len__(self) -> int:
        return len(self.snapshots)

    @property
    def start_s(self) -> float:
        return self.snapshots[0][0] if self.snapshots else 0.0

    @property
    def end_s(self) -> float:
        return self.snapshots[-1][0] if self.snapshots else 0.0

    def _sums(self, sample: str, by: Sequence[str]) -> list[tuple[float, dict[tuple[str, ...], float]]]:
        out = []
        for at, samples in self.snapshots:
            sums: dict[tuple[str, ...], float] = defaultdict(float)
            for (name, labels), value in samples.items():
                if name == sample and not math.isnan(value):
                    got = dict(labels)
                    sums[tuple(got.get(k, "") for k in by)] += value
            out.append((at, dict(sums)))
        return out

    def gauge(self, name: str, by: Sequence[str]) -> Series:
        series: Series = defaultdict(list)
        for at, sums in self._sums(name, by):
            for key, value in sums.items():
                series[key].append((at, value))
        return dict(series)

    def rate(self, name: str, by: Sequence[str]) -> Series:
        series: Series = defaultdict(list)
        steps = self._sums(f"{name}_total", by)
        for (t0, before), (t1, after) in zip(steps, steps[1:], strict=False):
            for key, value in after.items():
                grown = value - before.get(key, 0.0)
                series[key].append((t1, (value if grown < 0 else grown) / max(t1 - t0, 1e-9)))  # < 0: a restart
        return dict(series)

    def quantile(self, name: str, q: float) -> list[tuple[float, float]]:
        points = []
        steps = self._sums(f"{name}_bucket", ["le"])
        for (_, before), (t1, after) in zip(steps, steps[1:], strict=False):
            buckets = sorted((float(le), after[(le,)] - before.get((le,), 0.0)) for (le,) in after)
            value = bucket_quantile(q, buckets)
            if value is not None:
                points.append((t1, value))
        return points


class Scraper:
    """Scrape ``url`` every ``every_s`` seconds into :attr:`scrapes`, on a thread, until :meth:`stop`."""

    def __init__(self, url: str, every_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.url, self.every_s, self.clock = url, every_s, clock
        self.scrapes = Scrapes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)

    def start(self) -> Scraper:
        self._thread.start()
        return self

    def stop(self) -> Scrapes:
        """Stop, after one last scrape; the snapshots taken."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._scrape()
        return self.scrapes

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._scrape()

    def _scrape(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                text = response.read().decode()
        except OSError:  # a missed scrape is a gap in the charts, not a failed run
            return
        self.scrapes.add(self.clock(), text)


class PrometheusRange:
    """The same questions asked of a Prometheus server, over ``[start_s, end_s]``."""

    def __init__(self, url: str, start_s: float, end_s: float, points: int = 240, timeout_s: float = 10.0) -> None:
        self.url, self._start_s, self._end_s, self.timeout_s = url.rstrip("/"), start_s, end_s, timeout_s
        self.step_s = max(math.ceil((end_s - start_s) / points), 1)
        self.window = f"{max(4 * self.step_s, 30)}s"  # a rate needs two scrapes in its window

    @property
    def start_s(self) -> float:
        return self._start_s

    @property
    def end_s(self) -> float:
        return self._end_s

    def gauge(self, name: str, by: Sequence[str]) -> Series:
        return self._range(f"sum by ({', '.join(by)}) ({name})", by)

    def rate(self, name: str, by: Sequence[str]) -> Series:
        return self._range(f"sum by ({', '.join(by)}) (rate({name}_total[{self.window}]))", by)

    def quantile(self, name: str, q: float) -> list[tuple[float, float]]:
        series = self._range(f"histogram_quantile({q}, sum by (le) (rate({name}_bucket[{self.window}])))", [])
        return [(t, v) for t, v in series.get((), []) if not math.isnan(v)]

    def _range(self, query: str, by: Sequence[str]) -> Series:
        params = urllib.parse.urlencode({"query": query, "start": self._start_s, "end": self._end_s,
                                         "step": self.step_s})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query_range?{params}", timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise TimelineError(f"Prometheus at {self.url} did not answer {query!r}: {exc}",
                                hint="is Prometheus running there? Name it with --prometheus URL") from exc
        if body.get("status") != "success":
            raise TimelineError(f"Prometheus at {self.url} refused {query!r}: {body.get('error')}")
        return {tuple(r["metric"].get(k, "") for k in by): [(float(t), float(v)) for t, v in r["values"]]
                for r in body["data"]["result"]}


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, linear within a bucket.

    >>> bucket_quantile(0.9, [(0.01, 50.0), (0.1, 100.0), (math.inf, 100.0)])
    0.082
    >>> bucket_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    True
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: Prometheus answers that bound too
            return round(lower + (upper - lower) * (rank - below) / max(count - below, 1e-12), 6)
        lower, below = upper, count
    return lower
