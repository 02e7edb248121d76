"""Routing policies: turn a validated policy document into a plan per request.

A plan says which model is preferred for this request and in which order the
others are accepted after their waits. The four strategies differ only in how
the preferred model is picked and how the rest are ordered:

=================  ==========================================  ======================
strategy           preferred model                             fallback order
=================  ==========================================  ======================
fixed              the chain's first                           the chain
weighted           drawn with the policy's weights             the chain
epsilon-greedy     best posterior mean; epsilon of requests    best mean first
                   draw uniformly
thompson           highest posterior draw (``credit: chosen``)  best mean first
                   or best posterior mean (``credit: all``,
                   where every model learns from every
                   outcome); ``explore`` of requests draw
                   uniformly
=================  ==========================================  ======================

A ramped model (role ``ramp``) is preferred for its current share of requests,
whatever the strategy. Shadows and ramped models are never in a fallback chain.

>>> p = FixedChain("demo", 3, [("m3", 40), ("m2", 30), ("m1", None)], sla_ms=100, default_score=0.5)
>>> plan = p.plan("r1", now_ms=0)
>>> plan.models, plan.default_score, plan.policy_version
(('m3', 'm2', 'm1'), 0.5, 3)
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from policies.schema import (
    EpsilonGreedyRouting,
    Policy,
    RampSpec,
    ThompsonRouting,
    WeightedRouting,
)
from rendezvous.routing.bandit import BetaBernoulli, Family, Learner, NormalGamma
from rendezvous.routing.outcomes import RewardRule
from rendezvous.routing.plan import Plan
from rendezvous.routing.ramp import RampLimits, RampMonitor, RampSchedule

__all__ = ["FixedChain", "learner_for", "same_learning", "CompiledPolicy", "compile_policy"]


class FixedChain:
    """The same fallback chain for every request, built by hand (tests, benchmarks)."""

    def __init__(
        self, name: str, version: int, chain: Iterable[tuple[str, float | None]], sla_ms: float,
        default_score: float | None = None, extra_models: Iterable[str] = (), versions: dict[str, str] | None = None,
    ) -> None:
        self.name, self.version = name, version
        self.versions = dict(versions or {})
        self._plan = Plan.chain(chain, sla_ms, default_score, policy=name, policy_version=version,
                                versions=self.versions or None)
        self._models = frozenset(self._plan.models) | frozenset(extra_models)

    @property
    def models(self) -> frozenset[str]:
        return self._models

    def plan(self, request_id: str, now_ms: float) -> Plan:
        return self._plan


def learner_for(policy: Policy) -> Learner:
    """The posterior family and forgetting a policy's ``learning`` section asks for."""
    learning = policy.learning
    prior = learning.prior
    family: Family = (BetaBernoulli(prior.alpha, prior.beta) if learning.reward.kind == "bernoulli"
                      else NormalGamma(prior.mean, prior.kappa, prior.a, prior.b))
    forgetting = learning.forgetting
    return Learner(family, forgetting.half_life_s, forgetting.window_s, forgetting.adaptive_delta)


def same_learning(a: Policy, b: Policy) -> bool:
    """Whether ``b``'s posteriors may carry on from ``a``'s: the same reward (kind, threshold,
    target and credit: what a reward means), prior and forgetting."""
    return a.learning.reward == b.learning.reward and a.learning.prior == b.learning.prior \
        and a.learning.forgetting == b.learning.forgetting


class CompiledPolicy:
    """A policy document, ready to plan requests. Holds no state of its own but the ramps."""

    def __init__(self, doc: Policy, learner: Learner, rng: random.Random, applied_ms: float) -> None:
        self.doc, self.learner, self.rng = doc, learner, rng
        self.name, self.version = doc.name, doc.version
        self.routing = doc.routing
        self.chain = [e.model for e in doc.routing.chain]
        self.waits = {e.model: e.wait_ms for e in doc.routing.chain}
        self.waits.update({m: e.wait_ms for m, e in doc.models.items() if e.wait_ms is not None})
        self.roles = doc.model_roles
        self.champion = doc.champion or self.chain[0]
        self.canary = doc.canary.model if doc.canary else None
        r = doc.learning.reward
        self.reward_rule = RewardRule(r.kind, r.threshold, r.target, r.credit)
        self.ramps = [
            RampMonitor(m, RampSchedule(e.ramp.start, e.ramp.step, e.ramp.every_s, e.ramp.max_share),
                        RampLimits(e.ramp.p99_latency_ms, e.ramp.max_disagreement, e.ramp.max_canary_disagreement,
                                   r.threshold, e.ramp.min_samples, e.ramp.window,
                                   e.ramp.min_outcomes, _max_worse(e.ramp), e.ramp.promote),
                        applied_ms, self.champion, self.canary)
            for m, e in doc.models.items() if e.role == "ramp" and e.ramp is not None
        ]
        self._models = frozenset(self.roles)
        self.versions = {m: e.version for m, e in doc.models.items() if e.version}

    @property
    def models(self) -> frozenset[str]:
        return self._models

    def plan(self, request_id: str, now_ms: float) -> Plan:
        audit: dict[str, Any] = {"strategy": self.routing.strategy}
        preferred = self._ramped(now_ms, audit) or self._preferred(now_ms, audit)
        if isinstance(self.routing, EpsilonGreedyRouting | ThompsonRouting):
            rest = sorted((m for m in self.chain if m != preferred), key=lambda m: -self.learner.mean(m, now_ms))
        else:
            rest = [m for m in self.chain if m != preferred]
        order = [preferred, *rest]
        stages = [(m, self.waits.get(m) if i < len(order) - 1 else None) for i, m in enumerate(order)]
        d = self.doc
        return Plan.chain(stages, d.sla_ms, d.default.score, policy=d.name, policy_version=d.version, audit=audit,
                          versions=self.versions or None)

    def _ramped(self, now_ms: float, audit: dict[str, Any]) -> str | None:
        for ramp in self.ramps:
            share = ramp.share(now_ms)
            if self.rng.random() < share:
                audit["ramp"] = {"model": ramp.model, "share": round(share, 4)}
                return ramp.model
        return None

    def _preferred(self, now_ms: float, audit: dict[str, Any]) -> str:
        routing, chain, rng = self.routing, self.chain, self.rng
        if isinstance(routing, WeightedRouting):
            weights = [routing.weights.get(m, 0.0) for m in chain]
            return rng.choices(chain, weights)[0]
        if isinstance(routing, EpsilonGreedyRouting):
            if rng.random() < routing.epsilon:
                audit["explored"] = True
                return rng.choice(chain)
            means = {m: self.learner.mean(m, now_ms) for m in chain}
            audit["means"] = {m: round(v, 4) for m, v in means.items()}
            return max(chain, key=means.__getitem__)
        if isinstance(routing, ThompsonRouting):
            if routing.explore and rng.random() < routing.explore:
                audit["explored"] = True
                return rng.choice(chain)
            if self.reward_rule.credit == "all":
                # Full information: every model that scored is credited whichever answer was returned,
                # so a draw away from the best mean buys no information, only regret. Take the best mean.
                means = {m: self.learner.mean(m, now_ms) for m in chain}
                audit["means"] = {m: round(v, 4) for m, v in means.items()}
                return max(chain, key=means.__getitem__)
            draws = {m: self.learner.sample(m, now_ms, rng) for m in chain}
            audit["sampled"] = {m: round(v, 4) for m, v in draws.items()}
            return max(chain, key=draws.__getitem__)
        return chain[0]


def compile_policy(doc: Policy, learner: Learner | None = None, rng: random.Random | None = None,
                   applied_ms: float = 0.0) -> CompiledPolicy:
    """The routing policy a document describes, sharing ``learner`` across policy versions."""
    return CompiledPolicy(doc, learner or learner_for(doc), rng or random.Random(), applied_ms)


def _max_worse(ramp: RampSpec) -> tuple[tuple[str, float], ...]:
    """``max_worse_than_champion``, with ``max_auc_shortfall`` as the ``roc_auc`` limit it is short for."""
    worse = dict(ramp.max_worse_than_champion)
    if ramp.max_auc_shortfall is not None:
        worse.setdefault("roc_auc", ramp.max_auc_shortfall)
    return tuple(worse.items())
