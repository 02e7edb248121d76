"""Who may steer the system: records that change what it answers are signed.

Anyone who can write to the broker could otherwise put a policy in force, answer a
request in a model's name, or teach the bandit. So the records that steer carry an
HMAC-SHA256 of their value in the :data:`SIGNATURE_HEADER` header, and readers given
the stack's secret accept only what verifies:

- **policies** (``policy apply``, a worker's rollback): the *policy key*;
- **scores**: a key *per model* (``model_key(name)``), which is all a model runner is
  given, so one model's runner cannot speak for another;
- **bandit observations** (worker to worker): the *worker key*.

All three are derived from one secret (:class:`StackSecret`, a file only its owner can
read; ``rendezvous up`` makes one). The secret and the keys are never printed or logged.
Without a secret nothing is checked, and the worker says so when it starts.

>>> secret = StackSecret(bytes(32))
>>> key = secret.model_key("fraud")
>>> signature = sign(key, b'{"model": "fraud"}')
>>> verify(key, b'{"model": "fraud"}', signature), verify(secret.model_key("other"), b'{"model": "fraud"}', signature)
(True, False)
>>> secret
StackSecret(<hidden>)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from rendezvous.kernel.errors import ConfigError
from rendezvous.kernel.settings import state_dir

__all__ = ["SIGNATURE_HEADER", "StackSecret", "sign", "signed_headers", "verify", "score_refusal", "signature_of",
           "load_key", "write_key", "remember_secret", "remembered_secret"]

#: The header holding the hex HMAC-SHA256 of a record's value.
SIGNATURE_HEADER = "rendezvous.signature"

_MIN_BYTES = 16


def sign(key: bytes, value: bytes) -> bytes:
    """The signature of ``value`` under ``key`` (hex, as the header carries it)."""
    return hmac.new(key, value, hashlib.sha256).hexdigest().encode()


def signed_headers(key: bytes | None, value: bytes) -> list[tuple[str, bytes]] | None:
    """The record headers that sign ``value`` with ``key``; None without a key (nothing is signed)."""
    return [(SIGNATURE_HEADER, sign(key, value))] if key else None


def verify(key: bytes, value: bytes | None, signature: bytes | None) -> bool:
    """Whether ``signature`` is ``value``'s under ``key`` (in constant time)."""
    if value is None or not signature:
        return False
    return hmac.compare_digest(sign(key, value), signature)


def score_refusal(secret: StackSecret | None, model: str, value: bytes | None,
                  headers: Iterable[tuple[str, bytes]] | dict[str, bytes] | None) -> str | None:
    """Why a score record is refused as not ``model``'s own (with a secret only), or None."""
    if secret is None:
        return None
    signature = signature_of(headers)
    if verify(secret.model_key(model), value, signature):
        return None
    if not signature:
        return f"score record of {model!r} is not signed: a runner of {model!r} signs with its key (--score-key-file)"
    return f"score record of {model!r} is not signed with {model!r}'s key: forged, or a runner given another key"


def signature_of(headers: Iterable[tuple[str, bytes]] | dict[str, bytes] | None) -> bytes | None:
    """The signature header's value among a record's headers (a list of pairs, or a dict), if any."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        if name == SIGNATURE_HEADER:
            return value if isinstance(value, bytes) else str(value).encode()
    return None


class StackSecret:
    """The secret the keys are derived from. Load it with :meth:`load`; make one with :meth:`create`."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_BYTES:
            raise ConfigError(f"the stack secret is {len(secret)} bytes; it needs at least {_MIN_BYTES}",
                              hint="make one with `rendezvous up` (WORKDIR/secret) or `openssl rand -hex 32`")
        self._secret = secret

    def __repr__(self) -> str:
        return "StackSecret(<hidden>)"

    @classmethod
    def load(cls, path: Path) -> StackSecret:
        return cls(load_key(path, "stack secret"))

    @classmethod
    def create(cls, path: Path) -> StackSecret:
        """The secret in ``path``, made (32 random bytes, readable by its owner only) if there is none."""
        if not path.exists():
            write_key(path, secrets.token_bytes(32))
        return cls.load(path)

    def _derive(self, purpose: str) -> bytes:
        return _derive(self._secret, purpose)

    @property
    def policy_key(self) -> bytes:
        return self._derive("policy")

    @property
    def worker_key(self) -> bytes:
        return self._derive("worker")

    def model_key(self, model: str) -> bytes:
        return self._derive(f"model:{model}")


@lru_cache(maxsize=4096)
def _derive(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, purpose.encode(), hashlib.sha256).digest()


def _remembered() -> Path:
    return state_dir() / "secrets.json"


def _read_remembered() -> dict[str, str]:
    try:
        found = json.loads(_remembered().read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def remember_secret(path: Path, bootstrap: str, prefix: str) -> None:
    """Let later commands on this machine (``policy apply``...) find the secret of the stack ``up`` runs
    on ``bootstrap`` with topics ``prefix``: where the file is, never what is in it."""
    known = _read_remembered()
    known[f"{bootstrap} {prefix}"] = str(path.resolve())
    _remembered().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remembered().write_text(json.dumps(known, indent=1))


def remembered_secret(bootstrap: str, prefix: str) -> StackSecret | None:
    """The secret of the stack ``rendezvous up`` ran on ``bootstrap`` with ``prefix``, if its file is still there."""
    path = _read_remembered().get(f"{bootstrap} {prefix}")
    return StackSecret.load(Path(path)) if path and Path(path).is_file() else None


def load_key(path: Path, what: str = "key") -> bytes:
    """A key file's bytes (hex text, or raw); refused if it is ours and others can read it."""
    try:
        info = path.stat()
        raw = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
    mode = info.st_mode
    # A file of ours must be private. One handed to us (a container's mounted key, owned by
    # the host's user) is as private as its mount, which we cannot see from here.
    if info.st_uid == os.geteuid() and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the {what} {path} can be read by others (mode {stat.S_IMODE(mode):o})",
                          hint=f"chmod 600 {path}")
    try:
        return bytes.fromhex(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return raw


def write_key(path: Path, key: bytes) -> Path:
    """Write ``key`` (as hex) to ``path``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key.hex() + "\n")
    os.chmod(path, 0o600)
    return path
