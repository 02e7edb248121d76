"""The fallback rule, restated independently of the product, to judge live results by the worker's own record.

A live test cannot know how long each hop takes on a busy machine, but every result
says when its scores arrived (``candidates``, ms after the request) and when it was
decided (``latency_ms``) and due (``due_ms``), all on the worker's clock. Given those,
the policy leaves exactly one right answer; :func:`check` says whether the worker gave it.

The rule (README, "Routing"): each model of the chain is tried alone for its wait, then
the next becomes acceptable too; a model that failed is not waited for; at the deadline
(the SLA less the worker's guard) every model is acceptable and, with none answered, the
default is given. The first acceptable model in chain order that has answered wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from rendezvous.kernel.wire import Result

TOLERANCE_MS = 0.01  # results carry times rounded to microseconds


@dataclass(frozen=True)
class Chain:
    """A fixed chain as a policy file states it: ``[(model, wait_ms), ...]``, the SLA and the worker's guard."""

    stages: tuple[tuple[str, float | None], ...]
    sla_ms: float
    guard_ms: float = 5.0

    @property
    def deadline_ms(self) -> float:
        return self.sla_ms - min(self.guard_ms, self.sla_ms / 4)

    def opens_ms(self) -> list[float]:
        opens, at = [], 0.0
        for _, wait in self.stages:
            opens.append(min(at, self.sla_ms))
            at += self.sla_ms if wait is None else wait
        return opens

    def answer_at(self, t: float, arrivals: dict[str, tuple[float, bool]]) -> tuple[str | None, str] | None:
        """(model, reason) the rule gives ``t`` ms after the request, or None while it still waits."""
        ok = {m for m, (at, failed) in arrivals.items() if at <= t and not failed}
        failed = {m for m, (at, bad) in arrivals.items() if at <= t and bad}
        models = [m for m, _ in self.stages]
        at_deadline = t >= self.deadline_ms
        for i, (model, opens) in enumerate(zip(models, self.opens_ms(), strict=True)):
            acceptable = at_deadline or t >= opens or all(m in failed for m in models[:i])
            if not acceptable:
                break
            if model in ok:
                return model, "preferred" if i == 0 else "fallback"
        if at_deadline or all(m in failed for m in models):
            return None, "default"
        return None

    def due_at(self, arrivals: dict[str, tuple[float, bool]]) -> float:
        """The first moment the rule answers."""
        moments = sorted({*self.opens_ms(), *(at for at, _ in arrivals.values()), self.deadline_ms})
        return next(t for t in moments if t <= self.deadline_ms and self.answer_at(t, arrivals) is not None)


def arrivals_of(result: Result) -> dict[str, tuple[float, bool]]:
    return {m: (c.arrived_ms, c.error is not None or c.score is None) for m, c in result.candidates.items()}


def check(result: Result, chain: Chain) -> None:
    """Assert that ``result`` is what ``chain`` says, given its own record of arrivals and times."""
    arrivals = arrivals_of(result)
    decided = result.latency_ms
    assert result.due_ms is not None, "the result does not say when it was due"
    due = result.due_ms - result.request_ms
    story = f"{result.request_id}: {result.detail}; arrivals {arrivals}; due {due:.3f}, decided {decided:.3f}"
    assert all(at <= decided + TOLERANCE_MS for at, _ in arrivals.values()), f"a candidate arrived after the decision: {story}"
    assert abs(due - chain.due_at(arrivals)) <= TOLERANCE_MS, f"due at {chain.due_at(arrivals):.3f} by the rule: {story}"
    assert decided >= due - TOLERANCE_MS, f"decided before it was due: {story}"
    expected = chain.answer_at(decided + TOLERANCE_MS, arrivals)
    assert expected == (result.model, result.reason), f"the rule says {expected}: {story}"
