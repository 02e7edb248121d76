"""The embedded runtime: every part of the system as a local process under a :class:`Supervisor`.

Model replicas, the decoy and rendezvous workers run exactly the programs a
container would run (``python -m containers``, ``python -m decoy``,
``python -m rendezvous serve``), each with its own status port on loopback.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from containers.spec import load_spec
from rendezvous.config import KafkaSettings
from rendezvous.broker import free_port
from rendezvous.runtime.supervisor import ChildSpec, Supervisor


@dataclass
class ProcessRuntime:
    kafka: KafkaSettings
    log_dir: Path
    topic_prefix: str = "rendezvous"
    app_id: str | None = None  # default: the topic prefix

    def __post_init__(self) -> None:
        self.supervisor = Supervisor()
        self.supervisor.start_background()

    def _common(self) -> list[str]:
        k = self.kafka
        return ["--broker", k.bootstrap, "--topic-prefix", self.topic_prefix, "--fetch-wait-ms", str(k.fetch_wait_ms),
                "--producer-linger-ms", str(k.producer_linger_ms), "--fetch-min-bytes", str(k.fetch_min_bytes)]

    def _add(self, name: str, argv: list[str], port: int, **labels: str) -> str:
        log = self.log_dir / (name.replace("/", "-") + ".log")
        self.supervisor.add(ChildSpec(name, argv, log, http_port=port, labels=labels))
        return name

    def start_model(self, spec_path: Path, replicas: int = 1, extra_args: list[str] | None = None) -> list[str]:
        spec = load_spec(spec_path)  # fail here, with the file named, rather than in a child's log
        names = []
        for i in range(replicas):
            port = free_port()
            argv = [sys.executable, "-m", "containers", "--spec", str(spec_path), *self._common(),
                    "--http-port", str(port), *(extra_args or [])]
            names.append(self._add(f"model/{spec.name}/{i}", argv, port, role="model", model=spec.name,
                                   version=spec.version))
        return names

    def start_decoy(self, archive: Path) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "decoy", "--archive", str(archive), *self._common(), "--http-port", str(port)]
        return self._add("decoy", argv, port, role="decoy")

    def start_rendezvous(self, policy_path: Path, workers: int = 1, extra_args: list[str] | None = None,
                         first_index: int = 0) -> list[str]:
        names = []
        for i in range(first_index, first_index + workers):
            port = free_port()
            argv = [sys.executable, "-m", "rendezvous", "serve", "--policy", str(policy_path), *self._common(),
                    "--app-id", self.app_id or self.topic_prefix, "--web-port", str(port), "--worker-id", f"{socket.gethostname()}/rendezvous-{i}",
                    "--log-level", "warning", *(extra_args or [])]
            names.append(self._add(f"rendezvous/{i}", argv, port, role="rendezvous"))
        return names

    def wait_ready(self, names: list[str], timeout: float = 60.0) -> list[str]:
        return self.supervisor.wait_ready(names, timeout)

    def stop(self, names: list[str] | None = None, timeout: float = 15.0) -> None:
        if names is None:
            self.supervisor.stop_all(timeout)
        else:
            for name in names:
                self.supervisor.remove(name, timeout)
