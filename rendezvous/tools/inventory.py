"""What the stack holds: the policy versions that took effect, and which models run right now: those
that scored lately (the scores topic, where every model writes), and those whose runners are in their
consumer group (idle, but deployed).

Used to refuse a policy that names a model nobody runs (a typo such as
``forrest`` would otherwise be applied and silently never chosen).
"""

from __future__ import annotations

import difflib
import time
from collections import defaultdict

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from policies.record import PolicyRecord, RefusedPolicyRecord, read_policy_record
from policies.schema import Policy
from rendezvous.kernel.kafka import read_range, since_offsets
from rendezvous.kernel.presence import read_presence
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.trust import StackSecret
from rendezvous.kernel.wire import WireError, decode_score_batch
from rendezvous.service.control import ControlFeed

__all__ = ["deployed_models", "policy_history", "running_models", "scoring_models", "unknown_models"]


def scoring_models(kafka: KafkaSettings, topics: Topics, window_s: float = 300.0,
                   timeout: float = 30.0) -> dict[str, set[str]]:
    """``{model: {versions}}`` of every model that wrote a score in the last ``window_s`` seconds."""
    consumer = Consumer(kafka.consumer(f"{topics.namespace}.inventory-{time.time_ns()}",
                                       **{"enable.auto.commit": False}))
    found: dict[str, set[str]] = defaultdict(set)
    try:
        span = since_offsets(consumer, topics.scores, time.time() * 1000 - 1000 * window_s, timeout)
        for message in read_range(consumer, topics.scores, span, timeout):
            try:
                batch = decode_score_batch(message.value())
            except WireError:
                continue
            found[batch.model].add(batch.model_version)
    finally:
        consumer.close()
    return dict(found)


def deployed_models(kafka: KafkaSettings, topics: Topics, names: set[str], timeout: float = 10.0) -> set[str]:
    """Which of ``names`` have a runner in their consumer group (``PREFIX.model.NAME.VERSION``) now.

    A broker that cannot list groups answers nothing here: the scores topic still does. By the group's
    name alone, a model ``a`` also counts as deployed while only a model ``a.b`` runs (names may hold dots)."""
    admin = AdminClient(kafka.admin())
    try:
        listed = admin.list_consumer_groups(request_timeout=timeout).result(timeout + 5)
    except KafkaException:
        return set()
    live = [g.group_id for g in listed.valid
            if g.state not in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN)]
    return {name for name in names if any(group.startswith(f"{topics.group(f'model.{name}')}.") for group in live)}


def policy_history(kafka: KafkaSettings, topics: Topics,
                   secret: StackSecret | None = None) -> list[tuple[Policy, PolicyRecord]]:
    """The valid policy versions on the topic, in the order they took effect (as workers given ``secret`` see it:
    a record not signed with its policy key never took effect)."""
    feed = ControlFeed(kafka, topics)
    try:
        drained = feed.read_policies()
    finally:
        feed.stop()
    out: list[tuple[Policy, PolicyRecord]] = []
    for value, _, signature in drained.policies:
        try:
            doc, record = read_policy_record(value, signature, secret.policy_key if secret is not None else None)
        except RefusedPolicyRecord:  # workers refuse it too: it never took effect
            continue
        if not out or doc.version > out[-1][0].version:
            out.append((doc, record))
    return out


def running_models(kafka: KafkaSettings, topics: Topics) -> set[str]:
    """Every model that scored in the last 5 minutes or has a replica announcing itself (idle but deployed)."""
    now = time.time() * 1000
    announced = {p.name for p in read_presence(kafka, topics) if p.role == "model" and p.alive(now)}
    return set(scoring_models(kafka, topics)) | announced


def unknown_models(named: set[str], kafka: KafkaSettings, topics: Topics) -> dict[str, list[str]]:
    """The models of ``named`` that nobody runs, each with the running models whose names are close
    (``forrest``: ``['forest']``)."""
    running = running_models(kafka, topics)
    missing = named - running
    if missing:  # a runner in its consumer group that has not announced itself (an older version)
        missing -= deployed_models(kafka, topics, missing)
    return {name: difflib.get_close_matches(name, sorted(running), n=3, cutoff=0.6) for name in sorted(missing)}
