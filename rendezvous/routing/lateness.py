"""Why an answer missed the SLA: the request reached the worker late, the worker's loop was busy, or the write was slow.

An answer is *due* when the rule would first have answered (:func:`rendezvous.routing.plan.due_ms`),
at the latest at the deadline, a guard before the SLA; it is *written* when the broker
acknowledged it. One written after the SLA missed it, and the time between due and written is
blamed on the largest of its three parts:

- ``intake``: from due to the worker first seeing the request (a backlog before the worker:
  clients, the broker, consumer lag);
- ``timer``: from then to the decision (the worker's own loop: a late timer, a long batch);
- ``write``: from the decision to the broker's acknowledgement.

Times are epoch ms; ``request_ms`` is when the SLA clock started.

>>> late_cause(request_ms=0, sla_ms=100, due_ms=95, seen_ms=20, decided_ms=95.4, written_ms=97) is None
True
>>> late_cause(request_ms=0, sla_ms=100, due_ms=95, seen_ms=20, decided_ms=108, written_ms=109)
'timer'
>>> late_cause(request_ms=0, sla_ms=100, due_ms=40, seen_ms=160, decided_ms=160.2, written_ms=161)
'intake'
>>> late_cause(request_ms=0, sla_ms=100, due_ms=95, seen_ms=20, decided_ms=95.2, written_ms=140)
'write'
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Cause", "CAUSES", "late_cause"]

Cause = Literal["intake", "timer", "write"]
CAUSES: tuple[Cause, ...] = ("intake", "timer", "write")


def late_cause(request_ms: float, sla_ms: float, due_ms: float, seen_ms: float, decided_ms: float,
               written_ms: float) -> Cause | None:
    """None if the answer was written by the SLA, else the main cause of its lateness."""
    if written_ms - request_ms <= sla_ms:
        return None
    intake = max(seen_ms - due_ms, 0.0)
    timer = max(decided_ms - max(seen_ms, due_ms), 0.0)
    write = max(written_ms - decided_ms, 0.0)
    parts: list[tuple[Cause, float]] = [("intake", intake), ("timer", timer), ("write", write)]
    return max(parts, key=lambda part: part[1])[0]
