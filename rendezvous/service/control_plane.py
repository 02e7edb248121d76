"""Everything on a worker that changes how requests are routed: policies, outcomes, ramps.

The worker calls :meth:`ControlPlane.on_decision` for each answer, hands it
outcome records, and calls :meth:`ControlPlane.tick` from its housekeeping loop.
A tick applies policy records and observations the control feed has read (so a
policy applied anywhere is in force here within milliseconds), publishes this
worker's observations, and checks the ramps, rolling a misbehaving one back by
publishing the next policy version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from policies.schema import Policy
from rendezvous.kernel.kafka import CONFLUENT, KafkaClients
from rendezvous.kernel.trust import signed_headers
from rendezvous.kernel.wire import WireError, decode_outcome
from rendezvous.routing.outcomes import ScoreIndex
from rendezvous.routing.router import Decision, Router
from rendezvous.service.control import POLICY_KEY, ControlFeed
from rendezvous.service.learning import OutcomeCrediting
from rendezvous.service.policies import PolicyStore, demoted, policy_record, promoted
from rendezvous.service.settings import ServiceSettings
from rendezvous.service.writer import Ack, ResultWriter

__all__ = ["FLUSH_EVERY_MS", "RAMP_CHECK_EVERY_MS", "ControlPlane"]

log = logging.getLogger("rendezvous.control")

FLUSH_EVERY_MS = 100.0
RAMP_CHECK_EVERY_MS = 1000.0


class ControlPlane:
    def __init__(self, settings: ServiceSettings, store: PolicyStore, feed: ControlFeed, router: Router,
                 writer: ResultWriter, on_fatal: Callable[[str], None], clients: KafkaClients = CONFLUENT) -> None:
        self.settings, self.store, self.feed, self.router, self.writer = settings, store, feed, router, writer
        horizon_ms = 1000.0 * store.doc.learning.outcome_horizon_s
        self.crediting = OutcomeCrediting(settings.kafka, settings.topics, settings.worker_id,
                                          ScoreIndex(horizon_ms, settings.outcome_index_size), on_fatal,
                                          settings.secret.worker_key if settings.secret else None, clients)
        self.crediting.quality.threshold = store.doc.learning.reward.threshold  # accuracy's cut, the policy's
        self.unsigned_bandit_records = 0
        self._next_flush = self._next_ramp_check = 0.0
        #: the models known to run (None: cannot tell); a live policy record naming others is refused
        self.running_models: Callable[[], set[str] | None] | None = None
        self.rollbacks: list[str] = []
        self.promotions: list[str] = []

    # ------------------------------------------------------------------ hot-path hooks

    def on_decision(self, decision: Decision) -> None:
        self.crediting.record(decision)
        ramps = self.store.compiled.ramps
        if ramps:
            t0 = decision.pending.t0
            arrived = {m: (v.score, v.arrived_ms - t0) for m, v in decision.pending.scores.items()}
            preferred = decision.pending.plan.stages[0].model
            for ramp in ramps:
                ramp.observe(arrived, decision.latency_ms, preferred == ramp.model)

    def reindex(self, results: list[Any]) -> None:
        """Index results a previous owner of a partition wrote, for their outcomes to come."""
        index = self.crediting.index
        for r in results:
            taken = {m: c for m, c in r.candidates.items() if c.score is not None}
            index.record(r.request_id, {m: c.score for m, c in taken.items()}, r.model, r.decided_ms,
                         {m: c.model_version for m, c in taken.items()})

    def on_late(self, late: list[tuple[str, str, float | None, str]]) -> None:
        for request_id, model, score, version in late:
            self.crediting.late(request_id, model, score, version)

    def on_outcome_event(self, event: Any, writer: ResultWriter, now_ms: float) -> None:
        message = event.message
        try:
            outcome = decode_outcome(message.value or b"")
        except WireError as exc:
            writer.dead_letter(Ack(event), message.key, message.value, f"invalid outcome: {exc}",
                               message.topic, message.partition, message.offset, kind="invalid_outcome")
            return
        self.crediting.on_outcome(outcome, Ack(event), self.store.compiled.reward_rule, now_ms)

    # ------------------------------------------------------------------ housekeeping

    def tick(self, now_ms: float) -> None:
        drained = self.feed.drain()
        if drained.unsigned:
            self.unsigned_bandit_records += drained.unsigned
            log.error("refused %d bandit record(s) not signed with the worker key (%d so far): only workers given "
                      "the stack's secret may teach the bandit", drained.unsigned, self.unsigned_bandit_records)
        for value, record_ms, signature in drained.policies:
            compiled = self.store.offer(value, record_ms, signature, self.running_models)
            if compiled is not None:
                self.router.set_policy(compiled)
                # the outcome horizon is the policy's in force, not the first one's
                self.crediting.index.horizon_ms = 1000.0 * compiled.doc.learning.outcome_horizon_s
                self.crediting.quality.threshold = compiled.doc.learning.reward.threshold
        if drained.observations:
            self.crediting.absorb(drained.observations, self.store.learner, now_ms)
        if now_ms >= self._next_flush:
            self._next_flush = now_ms + FLUSH_EVERY_MS
            self.crediting.flush()
            self.crediting.index.expire(now_ms)
        self.crediting.poll()
        if now_ms >= self._next_ramp_check:
            self._next_ramp_check = now_ms + RAMP_CHECK_EVERY_MS
            self._check_ramps(now_ms)

    def _check_ramps(self, now_ms: float) -> None:
        quality = self.crediting.quality
        for ramp in self.store.compiled.ramps:
            why = ramp.verdict(quality)
            if why is not None:
                doc = demoted(self.store.doc, ramp.model, why)
                log.warning("rolling %s back to shadow (policy v%d): %s", ramp.model, doc.version, why)
                self.rollbacks.append(f"v{doc.version}: {ramp.model}: {why}")
                self._publish(doc, f"automatic rollback: {why}")
                ramp.halt(why)  # preferred no more, here and now; the new version demotes it everywhere
                return
            why = ramp.promotion(now_ms, quality)
            if why is not None:
                doc = promoted(self.store.doc, ramp.model, why)
                log.warning("promoting %s to champion (policy v%d): %s", ramp.model, doc.version, why)
                self.promotions.append(f"v{doc.version}: {ramp.model}: {why}")
                self._publish(doc, f"automatic promotion: {why}")
                ramp.halt(f"promoted: {why}")  # judged once; the new version makes it the champion everywhere
                return

    def _publish(self, doc: Policy, reason: str) -> None:
        """On the writer's producer, without waiting: this runs on the worker's event loop."""
        value = policy_record(doc, reason=reason, by=f"rendezvous/{self.settings.worker_id}")
        secret = self.settings.secret
        self.writer.publish(self.settings.topics.policies, value, POLICY_KEY,
                            headers=signed_headers(secret.policy_key if secret else None, value))

    # ------------------------------------------------------------------ reporting

    def status(self, now_ms: float) -> dict[str, Any]:
        store, learner = self.store, self.store.learner
        compiled = store.compiled
        return {
            "policy": {"name": store.doc.name, "version": store.doc.version, "strategy": compiled.routing.strategy,
                       "refused_records": store.refused,  # invalid, or not signed with the policy key
                       "unsigned_bandit_records": self.unsigned_bandit_records,
                       "history": [{"version": a.version, "by": a.by, "reason": a.reason, "applied_ms": a.applied_ms,
                                    "adopted_ms": a.adopted_ms} for a in store.history[-10:]]},
            "posterior_means": {m: round(learner.mean(m, now_ms), 4) for m in sorted(compiled.models)},
            "reward_changes": {m: learner.changes(m) for m in sorted(compiled.models)},  # adaptive forgetting
            "ramps": {r.model: {"share": r.share(now_ms)} for r in compiled.ramps},
            "rollbacks": self.rollbacks,
            "promotions": self.promotions,
            **self.crediting.status(),
        }
