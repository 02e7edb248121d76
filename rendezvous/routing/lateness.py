"""Why an answer was late: the request reached the worker late, the worker's loop was busy, or the write was slow.

An answer is *due* when the rule would first have answered (:func:`rendezvous.routing.plan.due_ms`)
and *written* when the broker acknowledged it. The SLA guard is the time allowed between
the two (the last decision is taken that long before the SLA, so an answer within its
guard is within the SLA). An answer written later than that is late, and the time is
blamed on the largest of its three parts:

- ``intake``: from due to the worker first seeing the request (a backlog before the worker:
  clients, the broker, consumer lag);
- ``timer``: from then to the decision (the worker's own loop: a late timer, a long batch);
- ``write``: from the decision to the broker's acknowledgement.

>>> late_cause(due_ms=95, seen_ms=20, decided_ms=95.4, written_ms=97, guard_ms=5) is None
True
>>> late_cause(due_ms=95, seen_ms=20, decided_ms=108, written_ms=109, guard_ms=5)
'timer'
>>> late_cause(due_ms=40, seen_ms=160, decided_ms=160.2, written_ms=161, guard_ms=5)
'intake'
>>> late_cause(due_ms=95, seen_ms=20, decided_ms=95.2, written_ms=140, guard_ms=5)
'write'
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Cause", "CAUSES", "late_cause"]

Cause = Literal["intake", "timer", "write"]
CAUSES: tuple[Cause, ...] = ("intake", "timer", "write")


def late_cause(due_ms: float, seen_ms: float, decided_ms: float, written_ms: float, guard_ms: float) -> Cause | None:
    """None if the answer was written within ``guard_ms`` of being due, else the main cause of its lateness."""
    if written_ms - due_ms <= guard_ms:
        return None
    intake = max(seen_ms - due_ms, 0.0)
    timer = max(decided_ms - max(seen_ms, due_ms), 0.0)
    write = max(written_ms - decided_ms, 0.0)
    parts: list[tuple[Cause, float]] = [("intake", intake), ("timer", timer), ("write", write)]
    return max(parts, key=lambda part: part[1])[0]
