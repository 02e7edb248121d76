"""The rendezvous worker's Prometheus metrics, served at ``/metrics`` on its web port.

Two kinds: histograms observed as things happen (latencies, score
distributions), and everything else read from the worker's state when
Prometheus scrapes (counts the router keeps anyway, pending requests, consumer
lag, posterior means, traffic shares, canary drift), so the hot path pays only
for the histograms. Names follow Prometheus conventions: base units, ``_total``
counters, labels bounded by the policy's models (scores from models no policy
names are counted under ``model="other"``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from canary.watch import CanaryWatch
from rendezvous.routing.lateness import CAUSES, late_cause
from rendezvous.routing.router import Decision

if TYPE_CHECKING:
    from rendezvous.routing.quality import ModelQuality
    from rendezvous.routing.router import Router
    from rendezvous.service.policies import PolicyStore

__all__ = [
    "LATENESS_BUCKETS", "LATENCY_BUCKETS", "SCORE_BUCKETS", "SHARE_WINDOW", "DROP_KINDS", "DEADLETTER_KINDS",
    "LoopHistogram", "ServiceMetrics", "MetricSources",
]

LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
SHARE_WINDOW = 1000  # decisions the traffic shares are measured over
DROP_KINDS = ("late", "duplicate", "unknown_request", "other_version")
DEADLETTER_KINDS = ("invalid_request", "too_large", "invalid_score", "forged_score", "invalid_outcome")


class LoopHistogram:
    """A histogram for code that runs on one thread (the worker's event loop, which also
    serves /metrics): no lock, one bisect per observation. prometheus_client's thread-safe
    Histogram costs about ten times as much, and the worker observes every score.

    >>> h = LoopHistogram("demo_seconds", "A demo", ["model"], (0.1, 1.0))
    >>> h.labels("m1").observe(0.05); h.labels("m1").observe(0.5)
    >>> [(s.name, s.labels.get("le"), s.value) for s in next(iter(h.collect())).samples][:3]
    [('demo_seconds_bucket', '0.1', 1), ('demo_seconds_bucket', '1.0', 2), ('demo_seconds_bucket', '+Inf', 2)]
    """

    class Child:
        __slots__ = ("bounds", "counts", "total")

        def __init__(self, bounds: tuple[float, ...]) -> None:
            self.bounds, self.counts, self.total = bounds, [0] * (len(bounds) + 1), 0.0

        def observe(self, value: float) -> None:
            self.counts[bisect_left(self.bounds, value)] += 1
            self.total += value

    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...],
                 registry: CollectorRegistry | None = None) -> None:
        self.name, self.documentation, self.labelnames, self.buckets = name, documentation, labelnames, buckets
        self._children: dict[tuple[str, ...], LoopHistogram.Child] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> LoopHistogram.Child:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = LoopHistogram.Child(self.buckets)
        return child

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in sorted(self._children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, child.bounds), "+Inf"], child.counts, strict=False):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(values), buckets, child.total)
        yield family

    def describe(self) -> Iterable[Metric]:
        return []


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.result_latency = LoopHistogram(
            "rendezvous_result_latency_seconds", "From the request's timestamp to its result being decided",
            ["reason"], LATENCY_BUCKETS, self.registry)
        self.prediction_latency = LoopHistogram(
            "rendezvous_prediction_latency_seconds",
            "Result time minus the request's event time (its timestamp when it has none): what the client sees",
            [], LATENCY_BUCKETS, self.registry)
        self.score_arrival = LoopHistogram(
            "rendezvous_score_arrival_seconds", "From the request's timestamp to a model's score reaching the rendezvous",
            ["model"], LATENCY_BUCKETS, self.registry)
        self.scores = LoopHistogram(
            "rendezvous_model_score", "Distribution of the scores each model returned", ["model"],
            SCORE_BUCKETS, self.registry)
        self.decision_lateness = LoopHistogram(
            "rendezvous_decision_lateness_seconds",
            "From when a result was due (the rule would first have answered) to when it was decided",
            [], LATENESS_BUCKETS, self.registry)
        self.result_write = LoopHistogram(
            "rendezvous_result_write_seconds", "From producing a result to the broker acknowledging it",
            [], LATENESS_BUCKETS, self.registry)
        self.shares: deque[str] = deque(maxlen=SHARE_WINDOW)
        self.sla_misses: Counter[str] = Counter(dict.fromkeys(CAUSES, 0))  # by cause

    def observe_decision(self, decision: Decision) -> None:
        pending = decision.pending
        self.result_latency.labels(decision.choice.reason).observe(decision.latency_ms / 1000)
        self.prediction_latency.observe(max(decision.decided_ms - (pending.event_time or pending.t0), 0.0) / 1000)
        self.decision_lateness.observe(decision.lateness_ms / 1000)
        self.shares.append(decision.choice.model or "default")

    def observe_written(self, decision: Decision, written_ms: float) -> None:
        """A result's write was acknowledged: did it miss the SLA, and why (see :mod:`rendezvous.routing.lateness`)."""
        pending = decision.pending
        self.result_write.observe(max(written_ms - decision.decided_ms, 0.0) / 1000)
        cause = late_cause(pending.t0, pending.plan.sla_ms, decision.due_ms, pending.seen_ms, decision.decided_ms,
                           written_ms)
        if cause is not None:
            self.sla_misses[cause] += 1

    def observe_scores(self, model: str, scores: Iterable[Any], pending_t0: Callable[[str], float | None],
                       now_ms: float) -> None:
        histogram, arrival = self.scores.labels(model), self.score_arrival.labels(model)
        for s in scores:
            if s.score is not None:
                histogram.observe(s.score)
            t0 = pending_t0(s.request_id)
            if t0 is not None:
                arrival.observe(max(now_ms - t0, 0.0) / 1000)

    def attach(self, sources: MetricSources, clock: Callable[[], float]) -> None:
        """Read ``sources`` at scrape time; ``clock`` gives the time in epoch ms."""
        self.registry.register(_StateCollector(sources, self, clock))


@dataclass(frozen=True)
class MetricSources:
    """What the metrics read at scrape time: the worker hands these in (the metrics never see the worker)."""

    router: Router
    store: PolicyStore
    quality: ModelQuality
    deadletters: Counter  # written, by reason kind
    consumer_lag: Callable[[], dict[str, int]]  # per topic: records not read yet
    canary: Callable[[], CanaryWatch | None]  # the watch in force, if the policy names a canary


class _StateCollector:
    def __init__(self, sources: MetricSources, metrics: ServiceMetrics, clock: Callable[[], float]) -> None:
        self.sources, self.metrics, self.clock = sources, metrics, clock

    def collect(self) -> Iterable[Metric]:
        w, now = self.sources, self.clock()
        stats, compiled = w.router.stats, w.store.compiled
        named = compiled.models

        results = CounterMetricFamily("rendezvous_results", "Results written, by chosen model and reason",
                                      labels=["model", "reason"])
        for (reason, model), n in sorted(stats.decisions.items(), key=str):
            results.add_metric([model or "default", reason], n)
        yield results
        misses = CounterMetricFamily("rendezvous_sla_misses", "Results the broker acknowledged after the SLA, by main "
                                     "cause: intake (the request reached the worker late), timer (the worker's loop was "
                                     "busy), write (the broker was slow)", labels=["cause"])
        for cause, n in sorted(self.metrics.sla_misses.items()):
            misses.add_metric([cause], n)
        yield misses
        yield CounterMetricFamily("rendezvous_requests", "Requests read", value=stats.requests)
        yield CounterMetricFamily("rendezvous_duplicate_requests", "Requests read again (redelivery), not re-answered",
                                  value=stats.duplicate_requests)
        dropped = CounterMetricFamily("rendezvous_scores_dropped",
                                      "Scores not used: late, duplicate, unknown_model, unknown_request, other_version",
                                      labels=["kind", "model"])
        merged: Counter = Counter({(kind, model): 0 for kind in DROP_KINDS for model in named})  # series exist from 0
        for (kind, model), n in stats.dropped.items():
            merged[kind, model if model in named else "other"] += n
        for (kind, model), n in sorted(merged.items()):
            dropped.add_metric([kind, model], n)
        yield dropped
        dead = CounterMetricFamily("rendezvous_deadletters", "Records sent to the dead-letter topic, by reason",
                                   labels=["reason"])
        counts = dict.fromkeys(DEADLETTER_KINDS, 0)  # every series exists from 0
        counts.update(w.deadletters)
        for kind, n in sorted(counts.items()):
            dead.add_metric([kind], n)
        yield dead
        yield GaugeMetricFamily("rendezvous_pending_requests", "Requests waiting for their answer",
                                value=w.router.pending_count)
        oldest = w.router.oldest_pending_ms()
        yield GaugeMetricFamily("rendezvous_oldest_pending_age_seconds", "Age of the oldest request not yet answered",
                                value=max(now - oldest, 0.0) / 1000 if oldest is not None else 0.0)
        lag = GaugeMetricFamily("rendezvous_consumer_lag_records", "Records on the broker not yet read, by topic",
                                labels=["topic"])
        for topic, n in sorted(w.consumer_lag().items()):
            lag.add_metric([topic], n)
        yield lag
        posterior = GaugeMetricFamily("rendezvous_posterior_mean", "Posterior mean reward of each model",
                                      labels=["model"])
        for model in sorted(named):
            posterior.add_metric([model], w.store.learner.mean(model, now))
        yield posterior
        changes = CounterMetricFamily("rendezvous_reward_changes", "Changes of each model's reward that adaptive "
                                      "forgetting detected (its posterior then forgets what came before)",
                                      labels=["model"])
        for model in sorted(named):
            changes.add_metric([model], w.store.learner.changes(model))
        yield changes
        shares = GaugeMetricFamily("rendezvous_traffic_share",
                                   f"Share of the last {SHARE_WINDOW} results answered by each model", labels=["model"])
        counts = Counter(self.metrics.shares)
        total = sum(counts.values()) or 1
        for model in sorted(set(named) | {"default"}):
            shares.add_metric([model], counts.get(model, 0) / total)
        yield shares
        yield GaugeMetricFamily("rendezvous_policy_version", "Version of the policy in force", value=compiled.version)
        yield GaugeMetricFamily("rendezvous_policy_sla_seconds", "The SLA of the policy in force: every answer by then",
                                value=w.store.doc.sla_ms / 1000)
        quality = w.quality
        auc = GaugeMetricFamily("rendezvous_model_roc_auc",
                                "ROC AUC of each model's scores on the outcomes that arrived (sliding window)",
                                labels=["model"])
        judged = GaugeMetricFamily("rendezvous_model_quality_outcomes",
                                   "Labelled outcomes in each model's ROC AUC window", labels=["model"])
        measured = GaugeMetricFamily("rendezvous_model_quality",
                                     "Each model version's quality on the outcomes that arrived (sliding window), by "
                                     "measure: accuracy, log_loss, brier, roc_auc (labels); mae, rmse (numeric outcomes)",
                                     labels=["model", "version", "measure"])
        versions = quality.versions()
        for model in sorted(named):
            value = quality.roc_auc(model)
            if value is not None:
                auc.add_metric([model], value)
            judged.add_metric([model], quality.outcomes(model))
            for version in [v for m, v in versions if m == model] or [""]:  # "": outcomes of no known version
                for measure, v in quality.measures(f"{model}@{version}" if version else model).items():
                    measured.add_metric([model, version, measure], v)
        yield auc
        yield judged
        yield measured
        yield from _drift_metrics(w.canary())


def _drift_metrics(watch: CanaryWatch | None) -> Iterable[Metric]:
    if watch is None:
        return
    r = watch.report()
    labels = ["champion", "canary"]
    who = [watch.champion, watch.canary]

    def gauge(name: str, doc: str, value: float | None) -> Metric:
        family = GaugeMetricFamily(name, doc, labels=labels)
        family.add_metric(who, float("nan") if value is None else value)
        return family

    yield gauge("rendezvous_drift_detected", "1 while the champion's scores drift (sequential test), else 0",
                1.0 if r.drifting else 0.0)
    yield gauge("rendezvous_drift_direction", "+1 champion scores run high, -1 low, 0 no drift", r.direction)
    yield gauge("rendezvous_drift_reference_complete", "1 once the reference window is full and drift is judged",
                1.0 if r.phase == "monitoring" else 0.0)
    alarms = CounterMetricFamily("rendezvous_drift_alarms", "Times drift was raised", labels=labels)
    alarms.add_metric(who, r.alarms)
    yield alarms
    yield gauge("rendezvous_drift_paired_mean_difference", "Mean of champion - canary over the window",
                r.paired_mean_diff)
    yield gauge("rendezvous_drift_threshold", "The sequential tests' alarm threshold", r.threshold)
    for stat, doc in (("ks", "Kolmogorov-Smirnov distance"), ("psi", "Population stability index"),
                      ("wasserstein", "Wasserstein distance"), ("cusum", "Sequential test statistic (CUSUM)")):
        family = GaugeMetricFamily(f"rendezvous_drift_{stat}", f"{doc} of the champion's scores, against the "
                                   "canary's or its own reference", labels=[*labels, "against"])
        for against in ("reference", "canary"):
            value = getattr(r, f"{stat}_{against}")
            family.add_metric([*who, against], float("nan") if value is None else value)
        yield family
