"""The embedded runtime: every part of the system as a local process under a :class:`Supervisor`.

Model replicas, the decoy and rendezvous workers run exactly the programs a
container would run (``python -m containers``, ``python -m decoy``,
``python -m rendezvous serve``), each with its own status port on loopback.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from containers.spec import load_spec
from rendezvous.kernel.client_config import ENV_PREFIX
from rendezvous.kernel.errors import OperationsError
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.trust import StackSecret, write_key
from rendezvous.operations.base import Replica, replica_changes
from rendezvous.operations.broker import port_open
from rendezvous.operations.supervisor import ChildSpec, Supervisor

__all__ = ["ProcessRuntime"]


@dataclass
class ProcessRuntime:
    kafka: KafkaSettings
    log_dir: Path
    topic_prefix: str = "rendezvous"
    app_id: str | None = None  # default: the topic prefix
    #: The stack's secret: workers and gateways get the file, each model runner only its own key.
    secret_file: Path | None = None

    def __post_init__(self) -> None:
        self._client_file_written = False
        self.supervisor = Supervisor()
        self.supervisor.start_background()

    def _common_broker(self) -> list[str]:
        """--broker, --kafka-config and --topic-prefix: what every child needs to reach the system."""
        k = self.kafka
        security = []
        if k.client:  # children read the secrets from a private file, not from argv or the environment
            path = self.log_dir.parent / "kafka-client.properties"
            if not self._client_file_written:
                k.client.write(path)
                self._client_file_written = True
            security = ["--kafka-config", str(path)]
        return ["--broker", k.bootstrap, *security, "--topic-prefix", self.topic_prefix]

    def _secret(self) -> list[str]:
        """For a worker or a gateway: the stack's secret, by file."""
        return ["--secret-file", str(self.secret_file)] if self.secret_file else []

    def _score_key(self, model: str) -> list[str]:
        """For a model runner: a file with its model's key, and nothing else of the secret."""
        if not self.secret_file:
            return []
        key = StackSecret.load(self.secret_file).model_key(model)
        path = write_key(self.log_dir.parent / "keys" / f"model-{model}.key", key)
        return ["--score-key-file", str(path)]

    def _common(self) -> list[str]:
        """What the Kafka components take besides: the client tuning."""
        k = self.kafka
        return [*self._common_broker(), "--fetch-wait-ms", str(k.fetch_wait_ms),
                "--producer-linger-ms", str(k.producer_linger_ms), "--fetch-min-bytes", str(k.fetch_min_bytes)]

    def _add(self, name: str, argv: list[str], port: int, **labels: str) -> str:
        log = self.log_dir / (name.replace("/", "-") + ".log")
        self.supervisor.add(ChildSpec(name, argv, log, http_port=port, labels=labels,
                                      env_drop_prefixes=(ENV_PREFIX,) if self.kafka.client else ()))
        return name

    # ------------------------------------------------------------------ models (ModelRuntime)

    def deploy(self, spec_path: Path, replicas: int | None = None, extra_args: list[str] | None = None) -> list[str]:
        """Start replicas of a model version; deploying it again rescales it."""
        spec_path = Path(spec_path).resolve()
        spec = load_spec(spec_path)  # fail here, with the file named, rather than in a child's log
        wanted = spec.replicas if replicas is None else replicas
        running = {int(c.spec.labels["replica"]): c for c in self._model_children(spec.name, spec.version)}
        start, stop = replica_changes(list(running), wanted)
        for i in start:
            argv = [sys.executable, "-m", "containers", "--spec", str(spec_path), *self._common(),
                    *self._score_key(spec.name), "--http-port", "0", *(extra_args or [])]
            self._add(f"model/{spec.name}/{spec.version}/{i}", argv, 0, role="model", model=spec.name,
                      version=spec.version, replica=str(i), spec=str(spec_path))
        for i in stop:
            self.supervisor.remove(running[i].spec.name)
        return [c.spec.name for c in self._model_children(spec.name, spec.version)]

    start_model = deploy

    def scale(self, model: str, replicas: int, version: str | None = None) -> list[str]:
        versions = sorted({c.spec.labels["version"] for c in self._model_children(model, version)})
        if len(versions) != 1:
            raise ValueError(f"{model}: {'no replicas' if not versions else 'versions ' + ', '.join(versions)}; "
                             "name a deployed version")
        spec = self._model_children(model, versions[0])[0].spec.labels["spec"]
        return self.deploy(Path(spec), replicas)

    def stop_model(self, model: str, version: str | None = None) -> list[str]:
        names = [c.spec.name for c in self._model_children(model, version)]
        self.stop(names)
        return names

    def replicas(self, model: str | None = None) -> list[Replica]:
        health = {"running": "running", "backoff": "restarting", "failed": "failed", "stopped": "stopped"}
        out = []
        for child in self._model_children(model):
            labels, url = child.spec.labels, f"http://127.0.0.1:{child.http_port}"
            state = health[child.state]
            if state == "running" and not self.supervisor.is_ready(child.spec.name):
                state = "starting"
            detail = f"exit code {child.last_exit_code}" if child.last_exit_code else ""
            out.append(Replica(child.spec.name, labels["model"], labels["version"], int(labels["replica"]), state,
                               child.restarts, url, detail, str(child.pid or "")))
        return out

    def logs(self, model: str, tail: int = 50) -> dict[str, str]:
        out = {}
        for child in self._model_children(model):
            lines = child.spec.log_path.read_text(errors="replace").splitlines() if child.spec.log_path.exists() else []
            out[child.spec.name] = "\n".join(lines[-tail:])
        return out

    def _model_children(self, model: str | None = None, version: str | None = None) -> list:
        return [c for c in self.supervisor.children() if c.spec.labels.get("role") == "model"
                and (model is None or c.spec.labels["model"] == model)
                and (version is None or c.spec.labels["version"] == version)]

    def start_decoy(self, archive: Path) -> str:
        argv = [sys.executable, "-m", "decoy", "--archive", str(archive), *self._common(), "--http-port", "0"]
        return self._add("decoy", argv, 0, role="decoy")

    def start_rendezvous(self, policy_path: Path, workers: int = 1, extra_args: list[str] | None = None,
                         first_index: int = 0, web_port: int = 0) -> list[str]:
        """Start ``workers`` rendezvous workers; worker i serves /metrics on ``web_port + i`` (0: free ports)."""
        names = []
        for i in range(first_index, first_index + workers):
            port = web_port + i if web_port else 0  # 0: the worker binds a free one and says which
            if web_port and port_open("127.0.0.1", port):
                raise OperationsError(f"port {port} for rendezvous worker {i}'s metrics is in use",
                                      hint="pass another --web-port (RENDEZVOUS_WEB_PORT), or stop what uses it")
            argv = [sys.executable, "-m", "rendezvous", "serve", "--policy", str(policy_path), *self._common(),
                    *self._secret(),
                    "--app-id", self.app_id or self.topic_prefix, "--web-port", str(port),
                    "--worker-id", f"{socket.gethostname()}/rendezvous-{i}",
                    "--log-level", "warning", *(extra_args or [])]
            names.append(self._add(f"rendezvous/{i}", argv, port, role="rendezvous"))
        return names

    def start_gateway(self, port: int = 0, specs: list[Path] | None = None, name: str = "gateway",
                      extra_args: list[str] | None = None, grpc_port: int | None = 0) -> str:
        """The gateway (OIP v2): HTTP on ``port``, gRPC on ``grpc_port`` (0: free ones, in its ``/info``;
        None: no gRPC); ``specs`` tell it the models' inputs."""
        if port and port_open("127.0.0.1", port):
            raise OperationsError(f"port {port} for the gateway is in use",
                                  hint="pass another --gateway-port (RENDEZVOUS_GATEWAY_PORT), or stop what uses it")
        argv = [sys.executable, "-m", "rendezvous", "gateway", *self._common_broker(), *self._secret(),
                "--port", str(port), *(["--no-grpc"] if grpc_port is None else ["--grpc-port", str(grpc_port)]),
                "--gateway-id", f"{socket.gethostname()}-{name.replace('/', '-')}-{os.getpid()}",
                *[arg for spec in specs or [] for arg in ("--spec", str(spec))], *(extra_args or [])]
        return self._add(name, argv, port, role="gateway")

    def stop_roles(self, *roles: str, timeout: float = 15.0) -> None:
        """Stop every child of these roles (model, decoy, rendezvous, gateway), role by role."""
        for role in roles:
            self.stop([c.spec.name for c in self.supervisor.children() if c.spec.labels.get("role") == role], timeout)

    def wait_ready(self, names: list[str], timeout: float = 60.0) -> list[str]:
        return self.supervisor.wait_ready(names, timeout)

    def stop(self, names: list[str] | None = None, timeout: float = 15.0) -> None:
        """Stop the named children, or all: then gateways and rendezvous workers first, while the
        models still answer, so that their in-flight requests are answered."""
        if names is None:
            self.stop_roles("gateway", "rendezvous", timeout=timeout)
            self.supervisor.stop_all(timeout)
        else:
            for name in names:
                self.supervisor.remove(name, timeout)
