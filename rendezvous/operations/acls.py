"""Kafka ACLs for one deployment: each role may do on the broker only what its code does.

On a cluster that enforces ACLs (Kafka's ``StandardAuthorizer``), this is the second
lock beside the stack's signing secret: only the operators' and the workers' principals
may write the policies topic (workers publish rollbacks and promotions), only the
models' may write the scores topic, and no other principal can steer the system, even
with the right JSON. Every consumer group of a deployment starts with its prefix, so
one prefixed grant lets each role's readers in.

>>> from rendezvous.kernel.topics import Topics
>>> t = Topics.with_prefix("shop")
>>> for g in role_grants("model:*", t):
...     print(g)
topic shop.requests READ
topic shop.scores WRITE
topic shop.deadletter WRITE
topic shop.presence WRITE
group shop.* READ
>>> [str(g) for g in role_grants("client", t) if g.operation == "WRITE"]
['topic shop.requests WRITE', 'topic shop.outcomes WRITE']
>>> any(g.name == t.policies and g.operation == "WRITE" for g in role_grants("gateway", t))
False
>>> role_grants("intruder", t)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
rendezvous.kernel.errors.ConfigError: unknown role 'intruder': one of operator, worker, model:NAME (model:* for ...
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from rendezvous.kernel.errors import ConfigError, RendezvousError
from rendezvous.kernel.kafka import check_connection
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics

__all__ = ["ROLES", "AclError", "Grant", "role_grants", "parse_grant", "bindings", "apply_acls"]

ROLES = ("operator", "worker", "model:NAME", "decoy", "gateway", "client")


class AclError(RendezvousError):
    """The broker refused the ACLs (an unknown role or a malformed grant is a :class:`ConfigError`)."""


@dataclass(frozen=True)
class Grant:
    """One permission: ``operation`` on a ``topic``, ``group`` or the ``cluster``; ``prefixed``: on every name
    that starts with ``name`` (printed with a ``*``)."""

    resource: str
    name: str
    operation: str
    prefixed: bool = False

    def __str__(self) -> str:
        return f"{self.resource} {self.name}{'*' if self.prefixed else ''} {self.operation}"


def role_grants(role: str, topics: Topics, app_id: str | None = None) -> list[Grant]:
    """What ``role`` needs on the deployment ``topics`` (``app_id``: the workers' group, default the prefix)."""
    p, t = topics.namespace, topics
    groups = Grant("group", f"{p}.", "READ", prefixed=True)  # every group of the deployment starts with "PREFIX."

    def reads(*names: str) -> list[Grant]:
        return [Grant("topic", n, "READ") for n in names]

    def writes(*names: str) -> list[Grant]:
        return [Grant("topic", n, "WRITE") for n in names]

    if role == "operator":  # creates the topics, applies policies, reads everything, inspects the groups
        return [Grant("topic", f"{p}.", "ALL", prefixed=True), Grant("group", f"{p}.", "ALL", prefixed=True),
                Grant("group", app_id or p, "ALL"), Grant("cluster", "kafka-cluster", "DESCRIBE")]
    if role == "worker":
        return [*reads(t.requests, t.scores, t.results, t.outcomes, t.policies, t.bandit, t.presence),
                *writes(t.results, t.deadletter, t.bandit, t.policies, t.presence),
                Grant("topic", f"{p}.replies.", "WRITE", prefixed=True),  # the result's copy to a gateway
                Grant("group", app_id or p, "READ"), groups]
    if role.startswith("model:") and len(role) > len("model:"):
        # one principal per model or one for all: the scores topic is shared, and the stack's secret tells
        # one model's records from another's (a key per model)
        return [*reads(t.requests), *writes(t.scores, t.deadletter, t.presence), groups]
    if role == "decoy":
        return [*reads(t.requests), *writes(t.deadletter, t.presence), groups]
    if role == "gateway":  # makes a reply topic of its own, reads it, deletes it when it stops
        replies = [Grant("topic", f"{p}.replies.", op, prefixed=True) for op in ("CREATE", "READ", "DELETE")]
        return [*reads(t.policies, t.presence), *writes(t.requests, t.presence), *replies, groups]
    if role == "client":
        return [*writes(t.requests, t.outcomes), *reads(t.results, t.deadletter), groups]
    raise ConfigError(f"unknown role {role!r}: one of operator, worker, model:NAME (model:* for every model), decoy, "
                   "gateway, client")


def parse_grant(text: str) -> tuple[str, str]:
    """``ROLE=PRINCIPAL`` (``User:`` is added to a bare name).

    >>> parse_grant("worker=User:rendezvous-worker"), parse_grant("decoy=archiver")
    (('worker', 'User:rendezvous-worker'), ('decoy', 'User:archiver'))
    """
    role, sep, principal = text.partition("=")
    if not sep or not role or not principal.strip(":"):
        raise ConfigError(f"cannot read the grant {text!r}: write ROLE=PRINCIPAL, e.g. worker=User:rendezvous-worker")
    return role, principal if ":" in principal else f"User:{principal}"


_RESOURCES = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "cluster": ResourceType.BROKER}


def bindings(grants: list[tuple[str, str]], topics: Topics, app_id: str | None = None) -> list[tuple[str, Grant]]:
    """Every ``(principal, grant)`` for ``grants`` (``(role, principal)`` pairs), without repeats."""
    seen: dict[tuple[str, Grant], None] = {}
    for role, principal in grants:
        for grant in role_grants(role, topics, app_id):
            seen[(principal, grant)] = None
    return list(seen)


def apply_acls(kafka: KafkaSettings, granted: list[tuple[str, Grant]], timeout: float = 15.0) -> int:
    """Create the ACLs on the broker (an existing one is left as it is); how many were asked for."""
    check_connection(kafka)  # a broker that does not answer: one clear error, not librdkafka's retries
    admin = AdminClient(kafka.admin())
    acls = [AclBinding(_RESOURCES[g.resource], g.name,
                       ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL,
                       principal, "*", AclOperation[g.operation], AclPermissionType.ALLOW) for principal, g in granted]
    try:
        for future in admin.create_acls(acls, request_timeout=timeout).values():
            future.result()
    except KafkaException as exc:
        error = exc.args[0]
        hint = " (does the broker run an authorizer?)" if error.name() == "SECURITY_DISABLED" else ""
        raise AclError(f"the broker refused the ACLs: {error.str()}{hint}") from None
    return len(acls)
