"""A record of the policies topic: one policy version, who applied it and why.

Key ``POLICY_KEY`` on the compacted ``PREFIX.policies`` topic (one partition).
Every reader (a worker's ``PolicyStore.offer``, the gateway's follower, ``rendezvous
policy show``'s ``policy_history``) picks the version in force the same way: of the
records signed with the policy key (when it has one) that decode and validate, the
highest version.

>>> import msgspec
>>> raw = msgspec.json.encode({"policy": {"name": "p"}, "applied_ms": 1.0, "by": "me"})
>>> decode_policy_record(raw).by
'me'
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["POLICY_KEY", "PolicyRecord", "decode_policy_record"]

POLICY_KEY = b"policy"


class PolicyRecord(msgspec.Struct):
    policy: dict[str, Any]
    applied_ms: float
    by: str = ""
    reason: str = ""
    #: Applied with ``--allow-missing``: it may name models nobody runs yet (workers check otherwise).
    allow_missing: bool = False


_policy_decoder = msgspec.json.Decoder(PolicyRecord)


def decode_policy_record(data: bytes) -> PolicyRecord:
    """Raises :class:`msgspec.DecodeError` (or ``ValueError``/``RecursionError`` for hostile bytes)."""
    return _policy_decoder.decode(data)
