"""The rendezvous decision core: joins scores with requests and decides each answer.

Pure code, no I/O. The caller passes the time (epoch ms) into every call, feeds
in requests and scores as they arrive, and calls :meth:`Router.on_tick` when
:meth:`Router.next_wake_ms` comes. Each call returns a :class:`Step`: the answers
to write, and the tokens of input records that need no more work.

>>> from rendezvous.routing.policy import FixedChain
>>> router = Router(FixedChain("demo", 1, [("m2", 20), ("m1", None)], sla_ms=100))
>>> router.on_request("r1", partition=0, record_ms=1000, token="req-r1", now_ms=1001).decisions
[]
>>> step = router.on_scores("m1", "v1", [Score("r1", 1005, 1005, 1006, score=0.2)], token="b1", now_ms=1007)
>>> step.decisions, step.kept
([], 1)
>>> [(d.choice.model, d.choice.reason) for d in router.on_tick(now_ms=1020).decisions]
[('m1', 'fallback')]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rendezvous.kernel.wire import Score
from rendezvous.routing.plan import Choice, Plan, choose, describe, due_ms, next_change_ms
from rendezvous.routing.state import (
    DeadlineQueue,
    DecidedRequests,
    OrphanScore,
    OrphanScores,
    PendingRequest,
    ScoreView,
)

__all__ = ["RoutingPolicy", "RouterLimits", "Decision", "Step", "UNLISTED", "RouterStats", "Router"]


class RoutingPolicy(Protocol):
    """What the router needs from a policy: a plan per request, and the models it names."""

    name: str
    version: int

    @property
    def models(self) -> frozenset[str]: ...

    #: Model -> the only version whose scores count (models not here: any version).
    versions: dict[str, str]

    def plan(self, request_id: str, now_ms: float) -> Plan: ...


@dataclass(frozen=True)
class RouterLimits:
    """Bounds on the router's memory."""

    orphan_ttl_ms: float = 10_000  # how long a score may wait for its request
    orphan_max: int = 200_000
    decided_ttl_ms: float = 60_000  # how long a decided id is remembered
    decided_max: int = 500_000


@dataclass(slots=True)
class Decision:
    """An answer, and when it was due and taken (epoch ms).

    ``due_ms`` is when the rule, given when each score arrived, would first have
    answered (:func:`~rendezvous.routing.plan.due_ms`); ``decided_ms - due_ms`` is how
    late the worker was, because the request reached it late or its loop was busy.
    """

    pending: PendingRequest
    choice: Choice
    decided_ms: float
    detail: str
    due_ms: float

    @property
    def latency_ms(self) -> float:
        return self.decided_ms - self.pending.t0

    @property
    def lateness_ms(self) -> float:
        return max(self.decided_ms - self.due_ms, 0.0)


@dataclass(slots=True)
class Step:
    decisions: list[Decision] = field(default_factory=list)
    released: list[Any] = field(default_factory=list)  # tokens whose records need no more work
    kept: int = 0  # on_scores: how many scores now reference the batch token
    #: (request, model, score, model version) of scores that came after the answer
    late: list[tuple[str, str, float | None, str]] = field(default_factory=list)


#: How counts name a model the policy does not: a writer may invent any number of names.
UNLISTED = "other"


@dataclass
class RouterStats:
    requests: int = 0
    duplicate_requests: int = 0
    scores: int = 0
    #: (kind, model) -> scores not used; kinds: late, duplicate, unknown_model, unknown_request
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    model_errors: Counter[str] = field(default_factory=Counter)  # model -> scores that carried an error
    decisions: Counter[tuple[str, str | None]] = field(default_factory=Counter)  # (reason, model or "")


class Router:
    """Joins scores with requests and decides each answer by its plan.

    ``sla_guard_ms``: the last decision is taken this long before the SLA, so that
    the answer is written by then (see :mod:`rendezvous.routing.plan`).
    """

    def __init__(self, policy: RoutingPolicy, limits: RouterLimits = RouterLimits(), sla_guard_ms: float = 0.0) -> None:
        self.policy = policy
        self.limits = limits
        self.sla_guard_ms = sla_guard_ms
        self.stats = RouterStats()
        self._pending: dict[str, PendingRequest] = {}
        self._deadlines = DeadlineQueue()
        self._orphans = OrphanScores(limits.orphan_ttl_ms, limits.orphan_max)
        self._decided = DecidedRequests(limits.decided_ttl_ms, limits.decided_max)
        self._held: dict[int, list[PendingRequest]] = {}

    # ------------------------------------------------------------------ inputs

    def set_policy(self, policy: RoutingPolicy) -> None:
        """New requests follow ``policy``; requests in flight keep the plan they started with."""
        self.policy = policy

    def on_request(
        self, request_id: str, partition: int, record_ms: float, token: Any, now_ms: float,
        event_time: float | None = None,
    ) -> Step:
        step = Step()
        if request_id in self._pending or request_id in self._decided:
            self.stats.duplicate_requests += 1
            step.released.append(token)
            return step
        self.stats.requests += 1
        t0 = min(record_ms, now_ms)  # a producer clock ahead of ours must not stretch the SLA
        pending = PendingRequest(request_id, partition, t0, self.policy.plan(request_id, now_ms), token, event_time,
                                 seen_ms=now_ms)
        self._pending[request_id] = pending
        for orphan in self._orphans.take(request_id):
            if not pending.plan.accepts(orphan.model, orphan.view.model_version):
                self.stats.dropped["other_version", orphan.model] += 1
                step.released.append(orphan.token)
            elif not self._attach(pending, orphan.model, orphan.view, orphan.token):
                step.released.append(orphan.token)
        self._evaluate(pending, now_ms, step)
        return step

    def on_scores(self, model: str, model_version: str, scores: Iterable[Score], token: Any, now_ms: float) -> Step:
        """Take in one score record. ``step.kept`` scores now hold ``token``."""
        step = Step()
        named = model in self.policy.models
        pinned = self.policy.versions.get(model)
        for s in scores:
            self.stats.scores += 1
            view = ScoreView(model_version, s.score, s.error, now_ms, s.finished_ms)
            pending = self._pending.get(s.request_id)
            # A version pin is the request's plan's, not the policy's now: a request planned
            # before a version swap is answered by the version its policy named.
            if not (pending.plan.accepts(model, model_version) if pending is not None
                    else pinned is None or pinned == model_version):
                self.stats.dropped["other_version", model] += 1
                continue
            if pending is not None:
                if not (named or model in pending.plan.models):
                    self.stats.dropped["unknown_model", UNLISTED] += 1  # any name at all: not a label
                elif self._attach(pending, model, view, token):
                    step.kept += 1
                    # Every arrival and wake is evaluated, so an answer now was due now, unless the
                    # request's wake time has passed without its tick (the timer is late).
                    self._evaluate(pending, now_ms, step, due=now_ms if now_ms <= pending.wake_ms else None)
                continue
            if not named:
                self.stats.dropped["unknown_model", UNLISTED] += 1  # any name at all: not a label
                continue
            decided_models = self._decided.get(s.request_id)
            if decided_models is not None:
                kind = "duplicate" if model in decided_models else "late"
                self.stats.dropped[kind, model] += 1
                if kind == "late":
                    step.late.append((s.request_id, model, s.score, model_version))
            else:
                step.kept += 1
                for evicted in self._orphans.add(s.request_id, OrphanScore(model, view, token), now_ms):
                    self._drop_orphan(evicted, step)
        return step

    def on_tick(self, now_ms: float) -> Step:
        """Decide every request whose next change has come; expire old state."""
        step = Step()
        for wake, pending in self._deadlines.pop_due(now_ms):
            # Punctual unless the rule's next change after the wake time has come too (a late tick).
            punctual = pending.t0 + next_change_ms(pending.plan, wake - pending.t0, self.sla_guard_ms) > now_ms
            self._evaluate(pending, now_ms, step, due=wake if punctual else None)
        for orphan in self._orphans.expire(now_ms):
            self._drop_orphan(orphan, step)
        self._decided.expire(now_ms)
        return step

    def next_wake_ms(self) -> float | None:
        return self._deadlines.next_ms()

    # ------------------------------------------------------------------ recovery and rebalancing

    def hold(self, partition: int) -> None:
        """Until :meth:`release`, decide no request of ``partition`` that was already overdue
        when first seen (re-read after a restart) unless its preferred model has answered:
        its scores are being re-read too, and it should get them. Live requests are not held."""
        self._held.setdefault(partition, [])

    def release(self, partition: int, now_ms: float) -> Step:
        step = Step()
        for pending in self._held.pop(partition, []):
            if not pending.decided:
                self._evaluate(pending, now_ms, step)
        return step

    def mark_answered(self, request_ids: Iterable[str], now_ms: float) -> None:
        """Record ids already answered (found in the results topic after a restart)."""
        for request_id in request_ids:
            self._decided.add(request_id, frozenset(), now_ms)

    def knows(self, request_id: str) -> bool:
        """Whether ``request_id`` is pending here or was answered here (or marked answered)."""
        return request_id in self._pending or request_id in self._decided

    def forget(self, request_ids: Iterable[str], now_ms: float) -> None:
        """Someone else answered these: drop them if pending (no decision), and never decide them.
        Their scores' tokens are not released: a standby's hold nothing."""
        for request_id in request_ids:
            pending = self._pending.pop(request_id, None)
            if pending is not None:
                pending.decided = True  # its deadline entry is skipped from now on
            self._decided.add(request_id, frozenset(pending.scores) if pending else frozenset(), now_ms)

    def release_orphans(self) -> Step:
        """Let go of every orphan score, e.g. before partitions are handed to another worker."""
        step = Step()
        for orphan in self._orphans.drain():
            self._drop_orphan(orphan, step)
        return step

    def oldest_pending_ms(self) -> float | None:
        """When the oldest request still waiting for its answer was made (epoch ms)."""
        return next(iter(self._pending.values())).t0 if self._pending else None  # dicts keep arrival order

    def pending_t0(self, request_id: str) -> float | None:
        pending = self._pending.get(request_id)
        return pending.t0 if pending is not None else None

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def orphan_count(self) -> int:
        return len(self._orphans)

    def oldest_pending_t0(self) -> float | None:
        return min((p.t0 for p in self._pending.values()), default=None)

    # ------------------------------------------------------------------ internals

    def _attach(self, pending: PendingRequest, model: str, view: ScoreView, token: Any) -> bool:
        """Add a score to a pending request; False if the model had already answered it."""
        if model in pending.scores:
            self.stats.dropped["duplicate", model] += 1
            return False
        if view.error is not None or view.score is None:
            pending.failed.add(model)
            self.stats.model_errors[model] += 1
        pending.scores[model] = view
        pending.score_tokens.append(token)
        return True

    def _evaluate(self, pending: PendingRequest, now_ms: float, step: Step, due: float | None = None) -> None:
        """Decide ``pending`` if its plan says so. ``due``: when the answer was due if it is given now, when
        the caller knows it (the common, punctual case); None: worked out from the arrivals (``plan.due_ms``)."""
        # The epsilon makes a stage whose opening time has come (t0 + opens <= now) count
        # as open even when float rounding gives now - t0 a hair below its offset.
        elapsed = now_ms - pending.t0 + 1e-6
        answered = pending.scores.keys() - pending.failed if pending.failed else pending.scores.keys()
        guard = self.sla_guard_ms
        choice = choose(pending.plan, answered, pending.failed, elapsed, guard)
        if choice is None:
            wake = pending.t0 + next_change_ms(pending.plan, elapsed, guard)
            if wake != pending.wake_ms:
                self._deadlines.push(pending, wake)
            return
        if (choice.stage != 0 and pending.partition in self._held
                and pending.seen_ms - pending.t0 >= pending.plan.sla_ms):
            # Re-read after a restart, already overdue: its better scores may be on their way back.
            self._held[pending.partition].append(pending)
            return
        pending.decided = True
        del self._pending[pending.request_id]
        self._decided.add(pending.request_id, frozenset(pending.scores), now_ms)
        self.stats.decisions[choice.reason, choice.model or ""] += 1
        detail = describe(choice, pending.plan, elapsed, pending.failed)
        intake = pending.seen_ms - pending.t0
        if intake > pending.plan.deadline_ms(guard):
            # Overload made visible: the answer could not be on time; it goes at once, saying why.
            detail = (f"late intake: the request reached the worker {intake:.0f} ms after it was made, past its "
                      f"{pending.plan.deadline_ms(guard):.0f} ms deadline; answered at once: {detail}")
        if due is None:
            arrivals = {m: (v.arrived_ms - pending.t0, m in pending.failed) for m, v in pending.scores.items()}
            due = min(pending.t0 + due_ms(pending.plan, arrivals, guard), now_ms)
        step.decisions.append(Decision(pending, choice, now_ms, detail, due))

    def _drop_orphan(self, orphan: OrphanScore, step: Step) -> None:
        self.stats.dropped["unknown_request", orphan.model] += 1
        step.released.append(orphan.token)
