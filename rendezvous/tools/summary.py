"""What happened to a run's requests, from the client's side.

- ``answered``: requests with at least one result; ``lost``: with none;
  ``duplicated``: with more than one.
- ``within_sla``: answered requests decided within the SLA of their timestamp
  (the result's ``latency_ms``), which is the rendezvous's promise.
- ``latency_ms``: end to end, from the client's send to its receipt of the result.
- ``late``: answers decided after the SLA, by cause, from each result's own record:
  ``intake`` when the request reached the worker after its answer was due (a
  backlog before the worker: the broker, consumer lag, a client sending faster
  than the system answers), else ``worker_busy`` (the worker's loop decided late:
  starved of CPU). A hung model never makes an answer late: the rule falls back.

>>> from rendezvous.kernel.wire import Result
>>> r = Result("a", "m1", "1", 0.9, "preferred", "", 12.0, 1.0, "p", 1, {}, 0.0, 12.0, "w")
>>> s = summarize({"a": 0.0, "b": 0.0}, {"a": [(r, 15.0)]}, sla_ms=100)
>>> s["answered"], s["lost"], s["within_sla"], s["by_model"], s["latency_ms"]["p50"], s["late"]
(1, 1, 1, {'m1': 1}, 15.0, {})
>>> slow = Result("c", None, None, None, "default", "", 130.0, 120.0, "p", 1, {}, 0.0, 130.0, "w", due_ms=95.0)
>>> summarize({"c": 0.0}, {"c": [(slow, 131.0)]}, sla_ms=100)["late"]
{'intake': 1}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rendezvous.kernel.wire import Result

__all__ = ["percentiles", "late_cause", "summarize"]


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": round(float(p50), 2), "p90": round(float(p90), 2), "p99": round(float(p99), 2),
            "max": round(float(a.max()), 2)}


def late_cause(result: Result) -> str:
    """Why an answer decided after the SLA was late, by its own record (see the module's doc)."""
    due = result.due_ms if result.due_ms is not None else result.decided_ms
    seen = result.request_ms + result.intake_ms
    return "intake" if seen >= due else "worker_busy"


def summarize(
    sent_ms: Mapping[str, float],
    received: Mapping[str, Sequence[tuple[Result, float]]],
    sla_ms: float,
    labels: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Summarize a run. ``received`` maps request ids to (result, receipt time ms) pairs."""
    answered = [rid for rid in sent_ms if received.get(rid)]
    firsts = {rid: received[rid][0] for rid in answered}
    by_model = Counter(r.model or "(default)" for r, _ in firsts.values())
    by_reason = Counter(r.reason for r, _ in firsts.values())
    latencies = [at - sent_ms[rid] for rid, (_, at) in firsts.items()]
    summary: dict[str, Any] = {
        "sent": len(sent_ms),
        "answered": len(answered),
        "within_sla": sum(1 for r, _ in firsts.values() if r.latency_ms <= sla_ms),
        "lost": len(sent_ms) - len(answered),
        "duplicated": sum(1 for rid in answered if len(received[rid]) > 1),
        "unexpected": sum(1 for rid in received if rid not in sent_ms),
        "by_model": dict(by_model.most_common()),
        "by_reason": dict(by_reason.most_common()),
        "latency_ms": percentiles(latencies),
        "decision_latency_ms": percentiles([r.latency_ms for r, _ in firsts.values()]),
        "intake_ms": percentiles([r.intake_ms for r, _ in firsts.values()]),
        "late": dict(Counter(late_cause(r) for r, _ in firsts.values() if r.latency_ms > sla_ms).most_common()),
        "sla_ms": sla_ms,
    }
    if labels:
        scored = [(r.score, labels[rid]) for rid, (r, _) in firsts.items() if rid in labels and r.score is not None]
        if scored:
            summary["accuracy"] = round(sum((s > 0.5) == y for s, y in scored) / len(scored), 4)
        # the models' own answers: the default (given when none answered in time) is the machine's
        # speed, not a model's judgement
        by_models = [(r.score, labels[rid]) for rid, (r, _) in firsts.items()
                     if rid in labels and r.score is not None and r.model is not None]
        if by_models:
            summary["accuracy_of_models"] = round(sum((s > 0.5) == y for s, y in by_models) / len(by_models), 4)
    return summary
