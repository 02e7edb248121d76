"""Routing policies: turn a validated policy document into a plan per request.

>>> p = FixedChain("demo", 3, [("m3", 40), ("m2", 30), ("m1", None)], sla_ms=100, default_score=0.5)
>>> plan = p.plan("r1", now_ms=0)
>>> plan.models, plan.default_score, plan.policy_version
(('m3', 'm2', 'm1'), 0.5, 3)
"""

from __future__ import annotations

from collections.abc import Iterable

from policies.schema import Policy
from rendezvous.routing.plan import Plan


class FixedChain:
    """The ``fixed`` strategy: the same fallback chain for every request."""

    def __init__(
        self, name: str, version: int, chain: Iterable[tuple[str, float | None]], sla_ms: float,
        default_score: float | None = None, extra_models: Iterable[str] = (),
    ) -> None:
        self.name, self.version = name, version
        self._plan = Plan.chain(chain, sla_ms, default_score, policy=name, policy_version=version)
        self._models = frozenset(self._plan.models) | frozenset(extra_models)

    @property
    def models(self) -> frozenset[str]:
        return self._models

    def plan(self, request_id: str, now_ms: float) -> Plan:
        return self._plan


def compile_policy(policy: Policy) -> FixedChain:
    """The routing policy a policy document describes."""
    routing = policy.routing
    chain = [(e.model, e.wait_ms) for e in routing.chain]
    return FixedChain(
        policy.name, policy.version, chain, policy.sla_ms, policy.default.score,
        extra_models=policy.model_roles,
    )
