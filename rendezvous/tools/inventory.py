"""What the stack holds: the policy versions that took effect, and which models run right now: those
that scored lately (the scores topic, where every model writes), and those whose runners are in their
consumer group (idle, but deployed).

Used to refuse a policy that names a model nobody runs (a typo such as
``forrest`` would otherwise be applied and silently never chosen).
"""

from __future__ import annotations

import time
from collections import defaultdict

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from policies.record import PolicyRecord, decode_policy_record
from policies.schema import Policy
from rendezvous.kernel.documents import parse_document
from rendezvous.kernel.kafka import read_range, since_offsets
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.trust import StackSecret, verify
from rendezvous.kernel.wire import WireError, decode_score_batch
from rendezvous.service.control import ControlFeed

__all__ = ["deployed_models", "policy_history", "scoring_models"]


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
        if secret is not None and not verify(secret.policy_key, value, signature):
            continue
        try:
            record = decode_policy_record(value)
            doc = parse_document(record.policy, Policy, "record")
        except Exception:  # noqa: BLE001 - invalid records are refused by workers too
            continue
        if not out or doc.version > out[-1][0].version:
            out.append((doc, record))
    return out
