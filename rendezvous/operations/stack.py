"""Bringing up what a stack document declares, and taking it down cleanly.

Used by ``rendezvous up`` (until SIGTERM) and ``rendezvous demo`` (for one run).
Order matters on the way down: rendezvous workers stop first, while the models
still answer, so that every in-flight request is answered; then the models and
the decoy; then the embedded broker, if we started it.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rendezvous.kernel.admin import ensure_topics
from rendezvous.kernel.client_config import ClientConfig
from rendezvous.kernel.errors import OperationsError
from rendezvous.kernel.kafka import check_connection
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import DEFAULT_PARTITIONS, DEFAULT_RETENTION_MS, Topics
from rendezvous.kernel.trust import StackSecret, remember_secret
from rendezvous.operations.base import ModelRuntime
from rendezvous.operations.broker import (
    LOOPBACK,
    EmbeddedBroker,
    embedded_broker,
    fetch_wait_for,
    find_running_engine,
    forget_running,
    port_open,
    record_running,
)
from rendezvous.operations.docker import DockerRuntime
from rendezvous.operations.process import ProcessRuntime
from rendezvous.operations.stackfile import Stack

__all__ = ["Progress", "StackError", "StackOptions", "RunningStack", "running_stack"]

Progress = Callable[[str, dict[str, Any]], None]


class StackError(OperationsError):
    """The declared system could not be brought up."""


@dataclass
class StackOptions:
    broker: str | None = None  # None: the embedded broker running here, else a new one
    topic_prefix: str = "rendezvous"
    partitions: int = DEFAULT_PARTITIONS
    log_dir: Path = Path(".rendezvous/logs")
    archive_dir: Path | None = None  # None: the policy's deploy.decoy.archive
    find_running_broker: bool = True  # without --broker, use a `rendezvous broker` running here
    startup_timeout_s: float = 90.0
    client: ClientConfig = field(default_factory=ClientConfig)  # Kafka security, handed on to every child
    web_port: int = 0  # worker i's /metrics on web_port + i; 0: free ports (the demo, tests)
    gateway_port: int | None = None  # start the HTTP gateway on it (0: a free port); None: no gateway
    gateway_grpc_port: int | None = 0  # and its gRPC form on this one (0: a free port); None: HTTP only
    engine: str | None = None  # the embedded broker's engine: kafka, tansu, or None/auto (see operations.broker)
    broker_data: Path | None = None  # where an embedded Kafka keeps its logs (None: a temporary directory)
    broker_port: int = 0  # of the embedded broker `up` starts (0: a free one; `up`'s default is Kafka's 9092)
    retention_ms: int = DEFAULT_RETENTION_MS  # of the request path's topics, when they are created
    #: The stack's secret (made if missing): policies, scores and bandit records are signed and checked.
    #: None: nothing is (the worker warns that anyone who can write to the broker can steer it).
    secret_file: Path | None = None


@dataclass
class RunningStack:
    kafka: KafkaSettings
    topics: Topics
    runtime: ProcessRuntime  # the decoy and rendezvous workers, and models under runtime: process
    broker: EmbeddedBroker | None
    components: list[str] = field(default_factory=list)
    models: ModelRuntime | None = None  # where the models run: ``runtime`` itself, or a DockerRuntime
    gateway_url: str | None = None  # the HTTP gateway (OIP v2), if one was started
    options: StackOptions = field(default_factory=StackOptions)
    grpc_address: str | None = None  # the gateway's gRPC form (host:port), if served

    def revive_broker(self) -> str | None:
        """If the embedded broker has exited, start it again on its port and data and make any topic it
        lost (a broker without durable data loses them all); None if it runs. Raises :class:`BrokerError`.

        Every service reconnects by itself (they say they are not ready meanwhile): only the broker,
        which they cannot start, is up to us."""
        broker = self.broker
        if broker is None or broker.returncode is None:
            return None
        code = broker.returncode
        broker.stop()  # reaps it; a temporary data directory goes with it
        broker.start()
        if self.options.find_running_broker:
            record_running(broker)  # its pid changed
        ensure_topics(self.kafka, self.topics, self.options.partitions, retention_ms=self.options.retention_ms)
        return f"the embedded broker had exited (code {code}); started again on {broker.bootstrap} ({broker.describe()})"


@contextlib.contextmanager
def running_stack(options: StackOptions, stack: Stack, progress: Progress) -> Iterator[RunningStack]:
    """Start what ``stack`` declares (see :mod:`rendezvous.operations.stackfile`); stop it all on exit."""
    deploy = stack.deploy
    broker, bootstrap, engine = None, options.broker, None
    if bootstrap is None and options.find_running_broker and (found := find_running_engine()):
        bootstrap, engine = found
    if bootstrap is None:
        if options.broker_port and port_open(LOOPBACK, options.broker_port):
            raise OperationsError(f"cannot start the embedded broker on {LOOPBACK}:{options.broker_port}: in use",
                                  hint=f"use what listens there with --broker {LOOPBACK}:{options.broker_port}, or "
                                       "pass another --broker-port (RENDEZVOUS_BROKER_PORT), 0 for a free one")
        options.log_dir.mkdir(parents=True, exist_ok=True)
        broker = embedded_broker(options.engine, log_path=options.log_dir / "broker.log", data_dir=options.broker_data,
                                 retention_ms=options.retention_ms, port=options.broker_port)
        progress("status", {"text": f"starting the embedded broker ({broker.describe()})"})
        bootstrap, engine = broker.start(), broker.engine
        if options.find_running_broker:  # `up`: let explain, policy show ... find the broker it started
            record_running(broker)
    runtime, models = None, None
    try:
        # every child's consumers wait as long as this engine rewards (Kafka: long; Tansu: 5 ms)
        kafka = KafkaSettings(bootstrap, fetch_wait_ms=fetch_wait_for(engine), client=options.client)
        topics = Topics.with_prefix(options.topic_prefix)
        check_connection(kafka)
        ensure_topics(kafka, topics, options.partitions, retention_ms=options.retention_ms)
        secret = StackSecret.create(options.secret_file) if options.secret_file else None
        if secret is not None and options.find_running_broker:  # `up`: `policy apply` finds the secret
            remember_secret(options.secret_file, kafka.bootstrap, options.topic_prefix)
        runtime = ProcessRuntime(kafka, options.log_dir, options.topic_prefix, secret_file=options.secret_file)
        if deploy.runtime == "docker":
            models = DockerRuntime(kafka, options.topic_prefix, secret=secret)
        else:
            models = runtime
        names: list[str] = []
        kind = "containers" if deploy.runtime == "docker" else "local processes"
        progress("status", {"text": f"deploying {len(deploy.models)} model(s) as {kind}"})
        model_names = []
        for model, spec in zip(deploy.models, stack.spec_paths(), strict=True):
            model_names += models.deploy(spec, model.replicas)
        if models is not runtime:
            not_ready = models.wait_ready(model_names, options.startup_timeout_s)
            if not_ready:
                raise StackError(f"containers not ready after {options.startup_timeout_s:.0f}s: {', '.join(not_ready)}; "
                                 "see `rendezvous models` and `rendezvous logs MODEL`")
        else:
            names += model_names
        if deploy.decoy.enabled:
            names.append(runtime.start_decoy(options.archive_dir or Path(deploy.decoy.archive)))
        workers = runtime.start_rendezvous(stack.policy_path, deploy.rendezvous.workers,
                                           web_port=options.web_port)
        progress("status", {"text": f"starting {len(names)} model/decoy processes and {len(workers)} rendezvous worker(s)"})
        not_ready = runtime.wait_ready(names + workers, options.startup_timeout_s)
        if not_ready:
            raise StackError(f"not ready after {options.startup_timeout_s:.0f}s: {', '.join(not_ready)}; "
                             f"see the logs in {options.log_dir}")
        gateway_url = None
        if options.gateway_port is not None:
            gateway = runtime.start_gateway(options.gateway_port, stack.spec_paths(), grpc_port=options.gateway_grpc_port)
            not_ready = runtime.wait_ready([gateway], options.startup_timeout_s)
            if not_ready:
                raise StackError(f"the gateway was not ready after {options.startup_timeout_s:.0f}s; "
                                 f"see {options.log_dir}/gateway.log")
            workers.append(gateway)
            gateway_url = f"http://127.0.0.1:{runtime.supervisor.get(gateway).http_port}"
        yield RunningStack(kafka, topics, runtime, broker, model_names + names + workers, models, gateway_url, options,
                           grpc_address=_grpc_address(gateway_url))
    finally:
        if runtime is not None:
            progress("status", {"text": "stopping: rendezvous first, so in-flight requests are answered"})
            runtime.stop_roles("gateway", "rendezvous")
            if isinstance(models, DockerRuntime):
                models.stop_all()
            runtime.stop()  # the models and the decoy
        if broker is not None:
            forget_running(broker)
            broker.stop()


def _grpc_address(gateway_url: str | None) -> str | None:
    """Where the gateway serves gRPC, from its ``/info`` (it may have picked a free port)."""
    if gateway_url is None:
        return None
    try:
        with urllib.request.urlopen(f"{gateway_url}/info", timeout=10) as response:
            port = json.loads(response.read()).get("grpc_port")
    except (OSError, ValueError):
        return None
    return f"127.0.0.1:{port}" if port else None
