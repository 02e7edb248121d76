"""The policy in force on a worker, and how it changes.

Policies travel on the compacted ``PREFIX.policies`` topic; ``rendezvous policy
apply`` writes there, and so does a worker that rolls a ramp back. Every worker
reads every record and applies one only if it is valid and its version is higher
than the one in force: an invalid or stale record is refused, logged and counted,
and the old policy stays. Requests in flight keep the plan they started with.
"""

from __future__ import annotations

import getpass
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Producer

from policies.record import POLICY_KEY, PolicyRecord, RefusedPolicyRecord, UnsignedPolicyRecord, read_policy_record
from policies.schema import ModelEntry, Policy
from rendezvous.kernel.clock import now_ms
from rendezvous.kernel.errors import BrokerUnavailable
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.trust import StackSecret, signed_headers
from rendezvous.kernel.wire import encode
from rendezvous.routing.bandit import Learner
from rendezvous.routing.policy import (
    CompiledPolicy,
    compile_policy,
    learner_for,
    same_learning,
)

__all__ = ["who", "policy_record", "publish_policy", "demoted", "promoted", "Applied", "PolicyStore"]

log = logging.getLogger("rendezvous.policies")


def who() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return socket.gethostname()


def policy_record(doc: Policy, reason: str = "", by: str | None = None, allow_missing: bool = False) -> bytes:
    """The policies-topic record (key ``POLICY_KEY``, partition 0) that puts ``doc`` in force."""
    # the deprecated deploy section says what to run, not what to answer: it is not published
    routing = doc.model_dump(mode="json", exclude_none=True, exclude={"deploy"})
    return encode(PolicyRecord(routing, time.time() * 1000, by or who(), reason, allow_missing))


def publish_policy(kafka: KafkaSettings, topics: Topics, doc: Policy, reason: str = "", by: str | None = None,
                   secret: StackSecret | None = None, allow_missing: bool = False) -> None:
    """Blocking: write ``doc`` to the policies topic, for every worker to apply (CLI and startup only;
    a running worker publishes through its writer's producer, without blocking its loop).

    Signed with the policy key of ``secret``: workers given the secret refuse unsigned records."""
    producer = Producer(kafka.producer())
    value = policy_record(doc, reason, by, allow_missing)
    producer.produce(topics.policies, value, POLICY_KEY, partition=0,
                     headers=signed_headers(secret.policy_key if secret else None, value))
    if producer.flush(15):
        raise BrokerUnavailable(f"could not write the policy to {topics.policies} within 15 s")


def demoted(doc: Policy, model: str, reason: str) -> Policy:
    """The next version of ``doc``, with ``model`` back to shadow: an automatic rollback."""
    data = doc.model_dump(mode="json", exclude_none=True)
    data["version"] = doc.version + 1
    data.setdefault("models", {})[model] = ModelEntry(role="shadow").model_dump(mode="json", exclude_none=True)
    data["description"] = f"{doc.description} [v{doc.version + 1}: {model} rolled back to shadow: {reason}]".strip()
    return Policy.model_validate(data)


def promoted(doc: Policy, model: str, reason: str) -> Policy:
    """The next version of ``doc``, with the ramped ``model`` active, first in the chain and the champion
    (if the policy names one); the old champion stays in the chain behind it, as its fallback."""
    data = doc.model_dump(mode="json", exclude_none=True)
    data["version"] = doc.version + 1
    entry = doc.models[model]
    data["models"][model] = ModelEntry(role="active", version=entry.version).model_dump(mode="json", exclude_none=True)
    chain = [e for e in data["routing"]["chain"] if e["model"] != model]
    wait_ms = entry.wait_ms if entry.wait_ms is not None else doc.routing.chain[0].wait_ms  # as when it was ramped
    first = {"model": model} if wait_ms is None else {"model": model, "wait_ms": wait_ms}
    data["routing"]["chain"] = [first, *chain]
    if doc.champion is not None:
        data["champion"] = model
    if "weights" in data["routing"]:
        data["routing"]["weights"][model] = max(data["routing"]["weights"].values(), default=1.0)
    data["description"] = f"{doc.description} [v{doc.version + 1}: {model} promoted: {reason}]".strip()
    return Policy.model_validate(data)


@dataclass
class Applied:
    version: int
    applied_ms: float  # when it was applied, by whoever applied it (their clock)
    by: str
    reason: str
    adopted_ms: float  # when it came into force here (this worker's clock): requests seen from then on follow it


class PolicyStore:
    """The policy in force. With ``policy_key``, only records signed with it are applied."""

    def __init__(self, rng: random.Random, clock: Callable[[], float] = now_ms, policy_key: bytes | None = None) -> None:
        self.rng, self.clock, self.policy_key = rng, clock, policy_key
        self.doc: Policy | None = None
        self.compiled: CompiledPolicy | None = None
        self.learner: Learner | None = None
        self.history: list[Applied] = []
        self.refused = 0

    def adopt(self, doc: Policy, applied_ms: float, by: str = "", reason: str = "") -> CompiledPolicy:
        if self.doc is None or self.learner is None or not same_learning(self.doc, doc):
            if self.learner is not None:
                log.warning("policy v%d changes how rewards are learned: posteriors start afresh", doc.version)
            self.learner = learner_for(doc)
        self.doc = doc
        self.compiled = compile_policy(doc, self.learner, self.rng, applied_ms)
        self.history.append(Applied(doc.version, applied_ms, by, reason, self.clock()))
        log.info("policy %s v%d in force (%s%s)", doc.name, doc.version, by or "file", f": {reason}" if reason else "")
        return self.compiled

    def offer(self, value: bytes, record_ms: float, signature: bytes | None = None,
              running: Callable[[], set[str] | None] | None = None) -> CompiledPolicy | None:
        """Apply a policies-topic record if it is signed (when a key is set), valid and newer; None if not.

        With ``running`` (the models known to run, or None while that is not known), a newer policy that names
        a model nobody runs is refused, as ``policy apply`` refuses it, unless it was applied with
        ``--allow-missing``: otherwise any holder of the key could route every request to the default."""
        try:
            doc, record = read_policy_record(value, signature, self.policy_key)
        except RefusedPolicyRecord as exc:
            self.refused += 1
            log.error("refused a policy record, keeping v%s in force: %s%s", self.doc.version if self.doc else "-", exc,
                      ": only a holder of the stack's secret may change the policy (rendezvous policy apply "
                      "--secret-file)" if isinstance(exc, UnsignedPolicyRecord) else "")
            return None
        if self.doc is not None and doc.version <= self.doc.version:
            if doc.version < self.doc.version or doc != self.doc:
                log.info("ignored policy %s v%d: v%d is in force", doc.name, doc.version, self.doc.version)
            return None
        known = running() if running is not None and not record.allow_missing else None
        if known is not None:
            missing = set(doc.model_roles) - known - (set(self.doc.model_roles) if self.doc else set())
            if missing:
                self.refused += 1
                log.error("refused policy %s v%d of %s, keeping v%s in force: it names %s, which nobody runs "
                          "(`rendezvous models` lists what runs; `policy apply --allow-missing` publishes it anyway)",
                          doc.name, doc.version, record.by or "unknown", self.doc.version if self.doc else "-",
                          ", ".join(sorted(missing)))
                return None
        return self.adopt(doc, record.applied_ms or record_ms, record.by, record.reason)
