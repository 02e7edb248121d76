"""Outcomes in, observations out: the adapter around :class:`~rendezvous.routing.outcomes.ScoreIndex`.

An outcome credits the models that scored its request; the resulting observations
are batched into one record on the shared ``PREFIX.bandit`` topic every
``flush_interval_s``. The outcome's record is acknowledged only once that record is
delivered. Every worker, this one included, learns from the bandit topic alone,
so all workers hold the same posterior, and a restarted worker rebuilds it by
reading the topic back.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from rendezvous.kernel.kafka import CONFLUENT, KafkaClients
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.trust import signed_headers
from rendezvous.kernel.wire import Outcome, encode
from rendezvous.routing.bandit import Learner, Observation
from rendezvous.routing.outcomes import RewardRule, ScoreIndex
from rendezvous.routing.quality import ModelQuality
from rendezvous.routing.router import Decision
from rendezvous.service.control import BanditRecord
from rendezvous.service.writer import Ack

__all__ = ["OutcomeCrediting"]

log = logging.getLogger("rendezvous.learning")


class OutcomeCrediting:
    def __init__(self, kafka: KafkaSettings, topics: Topics, worker: str, index: ScoreIndex,
                 on_fatal: Callable[[str], None], worker_key: bytes | None = None,
                 clients: KafkaClients = CONFLUENT) -> None:
        self.topics, self.worker, self.index, self._on_fatal = topics, worker, index, on_fatal
        self._worker_key = worker_key  # signs bandit records: workers given the secret refuse unsigned ones
        self._producer: Producer = clients.producer(kafka.producer(**{"client.id": f"rendezvous-bandit-{worker}"}))
        self._observations: list[Observation] = []
        self._holds: list[Ack] = []
        self.outcomes: Counter = Counter()  # credited, duplicate, unknown
        #: ROC AUC per model on this worker's outcomes (its partitions' share of the traffic)
        self.quality = ModelQuality()

    def record(self, decision: Decision) -> None:
        """Remember a decided request's scores for the outcome to come."""
        views = decision.pending.scores
        scores = {m: v.score for m, v in views.items() if v.score is not None}
        self.index.record(decision.pending.request_id, scores, decision.choice.model, decision.decided_ms,
                          {m: views[m].model_version for m in scores})

    def late(self, request_id: str, model: str, score: float | None, version: str | None = None) -> None:
        if score is not None:
            self.index.add_late(request_id, model, score, version)

    def on_outcome(self, outcome: Outcome, hold: Ack, rule: RewardRule, now_ms: float) -> str:
        t_ms = outcome.time_ms if outcome.time_ms is not None else now_ms
        scores, versions = self.index.scores(outcome.request_id), self.index.versions(outcome.request_id)
        status, observations = self.index.credit(outcome.request_id, outcome.outcome, t_ms, rule, now_ms)
        self.outcomes[status] += 1
        if status == "credited" and scores:
            for model, score in scores.items():  # every model that scored it, whichever was returned
                self.quality.learn_one(model, score, outcome.outcome, versions.get(model))
        if observations:
            self._observations.extend(observations)
            self._holds.append(hold)
        else:
            hold.release()
        return status

    def flush(self) -> None:
        """Publish the observations gathered since the last flush as one bandit record."""
        if not self._observations:
            return
        record = BanditRecord(self.worker, [(o.request_id, o.model, o.reward, o.t_ms) for o in self._observations])
        holds = self._holds
        self._observations, self._holds = [], []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._on_fatal(f"could not write observations to {self.topics.bandit}: {err.str()}")
            else:
                for hold in holds:
                    hold.release()

        value = encode(record)
        self._producer.produce(self.topics.bandit, value, partition=0, on_delivery=delivered,
                               headers=signed_headers(self._worker_key, value))
        self._producer.poll(0)

    def poll(self) -> None:
        self._producer.poll(0)

    def absorb(self, observations: list[Observation], learner: Learner, now_ms: float) -> None:
        """Learn from observations read back from the bandit topic (any worker's)."""
        learner.observe_all(observations)
        for request_id in {o.request_id for o in observations}:
            self.index.mark_credited(request_id, now_ms)

    def status(self) -> dict[str, Any]:
        return {"outcomes": dict(self.outcomes), "indexed_requests": len(self.index),
                "quality": self.quality.report(),
                "observations_waiting": len(self._observations)}
