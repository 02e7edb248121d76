"""A record of the policies topic: one policy version, who applied it and why.

Key ``POLICY_KEY`` on the compacted ``PREFIX.policies`` topic (one partition).
Every reader (a worker's ``PolicyStore.offer``, the gateway's follower, ``rendezvous
policy show``'s ``policy_history``) reads a record with :func:`read_policy_record`, so
that they pick the version in force the same way: of the records signed with the
policy key (when there is one) that decode and validate, the highest version.

>>> import msgspec
>>> raw = msgspec.json.encode({"policy": {"name": "p", "version": 3, "sla_ms": 50, "default": {"score": 0.5},
...     "routing": {"strategy": "fixed", "chain": [{"model": "m"}]}}, "applied_ms": 1.0, "by": "me"})
>>> doc, record = read_policy_record(raw)
>>> doc.version, record.by
(3, 'me')
>>> read_policy_record(raw, signature=None, policy_key=b"k" * 32)
Traceback (most recent call last):
...
policies.record.UnsignedPolicyRecord: not signed with the stack's policy key
>>> read_policy_record(b'{"policy": {"name": "p"}, "applied_ms": 1}')  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
policies.record.RefusedPolicyRecord: ...
"""

from __future__ import annotations

from typing import Any

import msgspec

from policies.schema import Policy
from rendezvous.kernel.documents import DocumentError, parse_document
from rendezvous.kernel.trust import verify

__all__ = ["POLICY_KEY", "PolicyRecord", "RefusedPolicyRecord", "UnsignedPolicyRecord", "decode_policy_record",
           "read_policy_record"]

POLICY_KEY = b"policy"


class PolicyRecord(msgspec.Struct):
    policy: dict[str, Any]
    applied_ms: float
    by: str = ""
    reason: str = ""
    #: Applied with ``--allow-missing``: it may name models nobody runs yet (workers check otherwise).
    allow_missing: bool = False


_policy_decoder = msgspec.json.Decoder(PolicyRecord)


class RefusedPolicyRecord(ValueError):
    """A policies-topic record that puts no policy in force; the message says why."""


class UnsignedPolicyRecord(RefusedPolicyRecord):
    """Refused for its signature: not signed with the stack's policy key."""


def decode_policy_record(data: bytes) -> PolicyRecord:
    """Raises :class:`msgspec.DecodeError` (or ``ValueError``/``RecursionError`` for hostile bytes)."""
    return _policy_decoder.decode(data)


def read_policy_record(value: bytes | None, signature: bytes | None = None,
                       policy_key: bytes | None = None) -> tuple[Policy, PolicyRecord]:
    """The policy a record puts in force, and the record: signed with ``policy_key`` (when there is one),
    decoded and valid, or :class:`RefusedPolicyRecord` saying which of these it is not."""
    if policy_key is not None and not verify(policy_key, value, signature):
        raise UnsignedPolicyRecord("not signed with the stack's policy key" if not signature
                                   else "signed with another key than the stack's policy key")
    try:
        record = decode_policy_record(value or b"")
        doc = parse_document(record.policy, Policy, source=f"policy record of {record.by or 'unknown'}")
    except (msgspec.DecodeError, DocumentError, RecursionError, ValueError) as exc:  # any bytes: see wire._decode
        raise RefusedPolicyRecord(str(exc)) from None
    return doc, record
