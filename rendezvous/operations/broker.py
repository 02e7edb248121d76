"""The embedded broker: which engine runs it, and how other commands find it.

Nothing else in rendezvous assumes an engine: every command takes ``--broker
HOST:PORT`` and works against any Kafka cluster. The embedded broker is what makes
one machine self-sufficient. Two engines:

- ``kafka`` (the default wherever Java 17+ runs): Apache Kafka 4.x, one KRaft node
  (:mod:`~rendezvous.operations.kafka_broker`);
- ``tansu``: a Kafka-compatible Rust binary for machines without Java, with its
  limits (:mod:`~rendezvous.operations.tansu`).

A broker started by ``rendezvous broker`` or ``rendezvous up`` records itself in
a state file so that other commands on the same machine find it without being told.

>>> resolve_engine("tansu")
'tansu'
>>> resolve_engine("rabbit")
Traceback (most recent call last):
...
rendezvous.operations.embedded.BrokerError: unknown broker engine 'rabbit': choose auto, kafka or tansu
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rendezvous.kernel.settings import DEFAULT_FETCH_WAIT_MS, state_dir
from rendezvous.operations.embedded import LOOPBACK, BrokerError, EmbeddedBroker, free_port, port_open
from rendezvous.operations.kafka_broker import KafkaBroker
from rendezvous.operations.kafka_dist import kafka_available
from rendezvous.operations.tansu import TansuBroker, tansu_binary

__all__ = ["EmbeddedBroker", "KafkaBroker", "TansuBroker", "BrokerError", "ENGINES", "ENGINE_ENV",
           "resolve_engine", "embedded_broker", "record_running", "forget_running", "find_running",
           "resolve_broker", "find_running_engine", "fetch_wait_for", "free_port", "port_open", "tansu_binary", "LOOPBACK"]

ENGINES = ("auto", "kafka", "tansu")
ENGINE_ENV = "RENDEZVOUS_BROKER_ENGINE"


def resolve_engine(engine: str | None = None) -> str:
    """``kafka`` or ``tansu``: ``auto`` (the default) is Kafka where Java 17+ runs and its jars are
    fetched (``scripts/install`` does it), else Tansu."""
    engine = (engine or os.environ.get(ENGINE_ENV) or "auto").lower()
    if engine not in ENGINES:
        raise BrokerError(f"unknown broker engine {engine!r}: choose auto, kafka or tansu")
    if engine == "auto":
        return "kafka" if kafka_available() else "tansu"
    return engine


def embedded_broker(engine: str | None = None, *, log_path: Path | None = None, data_dir: Path | None = None,
                    port: int = 0, host: str = LOOPBACK, advertised_host: str | None = None,
                    **kafka: Any) -> EmbeddedBroker:
    """A not yet started broker of ``engine`` (see :func:`resolve_engine`).

    ``data_dir`` (Kafka only): where its logs persist; None: a temporary directory.
    Further keywords go to :class:`KafkaBroker` (``retention_ms``, ``jvm_opts``, ...).
    """
    if resolve_engine(engine) == "kafka":
        return KafkaBroker(port=port, host=host, advertised_host=advertised_host, log_path=log_path, data_dir=data_dir,
                           **kafka)
    return TansuBroker(port=port, host=host, advertised_host=advertised_host, log_path=log_path)


def fetch_wait_for(engine: str | None) -> int:
    """The consumers' ``fetch.wait.max.ms`` for a broker of ``engine`` (None: an unknown Kafka cluster)."""
    return TansuBroker.fetch_wait_ms if engine == "tansu" else DEFAULT_FETCH_WAIT_MS


# --------------------------------------------------------------------------- discovery


def _state_file() -> Path:
    return state_dir() / "broker.json"


def record_running(broker: EmbeddedBroker) -> None:
    """Let other commands on this machine find this broker."""
    path = _state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bootstrap": broker.bootstrap, "pid": broker.pid, "owner": os.getpid(),
                                "engine": broker.engine}))


def forget_running(broker: EmbeddedBroker | None = None) -> None:
    """Forget the recorded broker; with ``broker``, only if it is the one recorded (another may have taken over)."""
    if broker is not None:
        try:
            if json.loads(_state_file().read_text()).get("pid") != broker.pid:
                return
        except (OSError, ValueError):
            return
    _state_file().unlink(missing_ok=True)


def find_running_engine() -> tuple[str, str] | None:
    """(bootstrap, engine) of a ``rendezvous broker`` running on this machine, if any."""
    try:
        state = json.loads(_state_file().read_text())
        host, port = state["bootstrap"].rsplit(":", 1)
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    if not port_open(host, int(port)):
        return None
    return state["bootstrap"], state.get("engine", "tansu")


def find_running() -> str | None:
    """The bootstrap address of a ``rendezvous broker`` running on this machine, if any."""
    found = find_running_engine()
    return found[0] if found else None


def resolve_broker(broker: str | None) -> str:
    """The broker to talk to: the one given, else the embedded one running here.

    Raises :class:`BrokerError` saying what to do when there is neither.
    """
    if broker:
        return broker
    found = find_running()
    if found:
        return found
    raise BrokerError(
        "no broker given and no embedded broker running: pass --broker HOST:PORT, "
        "or start one with `rendezvous broker`"
    )
