"""A request's fallback plan, and the rule that picks an answer from the scores so far.

A plan is an ordered chain of models, each acceptable from some time after the
request: "use m3; after 40 ms use m2 if it has answered; after 30 ms more, m1".
At any moment the answer is the first model in the chain that is acceptable and
has answered. A model that reported an error will never answer, so the models
after it become acceptable at once instead of waiting out its budget. At the SLA,
if no model in the chain has answered, the plan's default is the answer.

The SLA promises that the answer is *written* by then, so the last decision is
taken a little before it: ``guard_ms`` before the SLA (the service's
``--sla-guard-ms``), every stage counts as open and, with no answer, the default
is given. The guard pays for what follows a decision (a timer firing late on a
busy loop, the write to Kafka); it is capped at a quarter of the SLA.

:func:`due_ms` says when an answer was *due*: the first moment at which, given
when each score arrived, the rule would have answered. A worker that decides
later than that was late (its request reached it late, or its loop was busy);
the result records both times.

Times are milliseconds since the request's timestamp; nothing here reads a clock.

>>> plan = Plan.chain([("m3", 40), ("m2", 30), ("m1", None)], sla_ms=100)
>>> [(s.model, s.opens_at_ms) for s in plan.stages]
[('m3', 0.0), ('m2', 40.0), ('m1', 70.0)]
>>> choose(plan, answered={"m2"}, failed=set(), elapsed_ms=10) is None   # only m3 acceptable yet
True
>>> choose(plan, answered={"m2"}, failed=set(), elapsed_ms=40)
Choice(model='m2', reason='fallback', stage=1)
>>> choose(plan, answered={"m2"}, failed={"m3"}, elapsed_ms=1)           # m3 failed: no need to wait
Choice(model='m2', reason='fallback', stage=1)
>>> choose(plan, answered=set(), failed=set(), elapsed_ms=100)
Choice(model=None, reason='default', stage=-1)
>>> choose(plan, answered=set(), failed=set(), elapsed_ms=95, guard_ms=5)   # the last decision, guarded
Choice(model=None, reason='default', stage=-1)
>>> due_ms(plan, arrivals={"m2": (12.0, False), "m1": (3.0, False)})      # m2 acceptable from its stage
40.0
>>> due_ms(plan, arrivals={"m3": (7.5, True), "m2": (12.0, False)})       # m3 failed: m2 at once
12.0
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rendezvous.kernel.wire import Reason

__all__ = ["MAX_GUARD_SHARE", "Stage", "Plan", "Choice", "choose", "next_change_ms", "due_ms", "describe"]

#: The guard never takes more than this share of the SLA from the models.
MAX_GUARD_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class Stage:
    """From ``opens_at_ms`` on, an answer from ``model`` is acceptable."""

    model: str
    opens_at_ms: float


@dataclass(frozen=True, slots=True)
class Plan:
    """How one request is to be answered. Built by a routing strategy, then fixed."""

    stages: tuple[Stage, ...]
    sla_ms: float
    default_score: float | None = None
    policy: str = ""
    policy_version: int = 0
    #: Why the plan is as it is (sampled values, exploration); copied into the result.
    audit: Mapping[str, Any] | None = field(default=None, compare=False)
    #: Model -> the only version whose scores count for this request (others are ignored).
    versions: Mapping[str, str] | None = field(default=None, compare=False)

    def accepts(self, model: str, model_version: str) -> bool:
        pinned = self.versions.get(model) if self.versions else None
        return pinned is None or pinned == model_version

    @classmethod
    def chain(
        cls,
        models_and_waits: Iterable[tuple[str, float | None]],
        sla_ms: float,
        default_score: float | None = None,
        **kwargs: Any,
    ) -> Plan:
        """Build a plan from ``(model, wait_ms)`` pairs: each model is tried alone for
        its wait before the next one becomes acceptable too. The last wait may be None."""
        stages, opens = [], 0.0
        for model, wait_ms in models_and_waits:
            stages.append(Stage(model, min(opens, sla_ms)))
            opens += wait_ms if wait_ms is not None else sla_ms
        return cls(tuple(stages), float(sla_ms), default_score, **kwargs)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(s.model for s in self.stages)

    def deadline_ms(self, guard_ms: float = 0.0) -> float:
        """When the last decision is taken: ``guard_ms`` before the SLA, at most a quarter of it.

        >>> Plan.chain([("m1", None)], sla_ms=100).deadline_ms(5)
        95.0
        >>> Plan.chain([("m1", None)], sla_ms=8).deadline_ms(5)
        6.0
        """
        return self.sla_ms - min(max(guard_ms, 0.0), self.sla_ms * MAX_GUARD_SHARE)


class Choice(NamedTuple):
    model: str | None  # None: the default answer
    reason: Reason
    stage: int  # index in the chain, -1 for the default


def choose(plan: Plan, answered: Collection[str], failed: Collection[str], elapsed_ms: float,
           guard_ms: float = 0.0) -> Choice | None:
    """The answer to give ``elapsed_ms`` after the request, or None to keep waiting.

    From the deadline (``guard_ms`` before the SLA) on, every stage is open.
    """
    if elapsed_ms >= plan.deadline_ms(guard_ms):
        elapsed_ms = max(elapsed_ms, plan.sla_ms)
    all_before_failed = True
    for index, stage in enumerate(plan.stages):
        if not (all_before_failed or elapsed_ms >= stage.opens_at_ms):
            break
        if stage.model in answered:
            return Choice(stage.model, "preferred" if index == 0 else "fallback", index)
        if stage.model not in failed:
            all_before_failed = False
    if elapsed_ms >= plan.sla_ms or all_before_failed:
        return Choice(None, "default", -1)
    return None


def next_change_ms(plan: Plan, elapsed_ms: float, guard_ms: float = 0.0) -> float:
    """When, with no new scores, :func:`choose` could next give a different answer."""
    deadline = plan.deadline_ms(guard_ms)
    for stage in plan.stages:
        if elapsed_ms < stage.opens_at_ms < deadline:
            return stage.opens_at_ms
    return deadline


def due_ms(plan: Plan, arrivals: Mapping[str, tuple[float, bool]], guard_ms: float = 0.0) -> float:
    """When an answer was due: the first moment :func:`choose` answers, given ``arrivals``.

    ``arrivals`` maps each model that scored to (when its score arrived, whether it was
    a failure), in ms after the request. The rule can only change its mind when a stage
    opens, a score arrives or the deadline comes, so only those moments are tried.
    """
    deadline = plan.deadline_ms(guard_ms)
    moments = sorted({*(s.opens_at_ms for s in plan.stages if s.opens_at_ms < deadline),
                      *(at for at, _ in arrivals.values() if at < deadline), deadline})
    for moment in moments:
        answered = [m for m, (at, failure) in arrivals.items() if at <= moment and not failure]
        failed = [m for m, (at, failure) in arrivals.items() if at <= moment and failure]
        if choose(plan, answered, failed, moment, guard_ms) is not None:
            return moment
    return deadline  # not reached: at the deadline choose always answers


def describe(choice: Choice, plan: Plan, elapsed_ms: float, failed: Collection[str]) -> str:
    """A one-line explanation of a choice, for the result's ``detail`` field."""
    if choice.reason == "preferred":
        return f"preferred model {choice.model} answered after {elapsed_ms:.1f} ms"
    if choice.reason == "fallback":
        skipped = ", ".join(
            f"{s.model} {'failed' if s.model in failed else 'had not answered'}" for s in plan.stages[: choice.stage]
        )
        return f"fallback to {choice.model} after {elapsed_ms:.1f} ms ({skipped})"
    if failed and all(s.model in failed for s in plan.stages):
        return f"default after {elapsed_ms:.1f} ms: every model in the chain failed"
    return f"default at the SLA ({plan.sla_ms:.0f} ms): no model in the chain had answered"
