"""Model replicas as containers, through the Docker Engine API.

The engine is the only state: every container carries labels saying which
stack (topic prefix), model, version and replica it is, where its spec is and
where its status endpoint listens, so ``rendezvous models``, ``scale`` and
``stop`` work from any shell, as ``kubectl`` does against a cluster.

Each replica runs the runner image's entrypoint (``python -m containers``)
with the model's spec directory mounted read-only at ``/model``, and runs
locked down: an init process (so SIGTERM reaches the runner), no new
privileges, every capability dropped, a read-only root filesystem with a small
``/tmp``, a non-root user, and the spec's CPU, memory (no swap) and pids
limits. The engine restarts a crashed replica up to ``max_restarts`` times and
then leaves it down, which ``models`` reports as failed. Replicas use the
host's network, so a broker on loopback is reachable, and each gets its own
status port.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

from containers.spec import ModelSpec, load_spec
from rendezvous.kernel.client_config import FILE_PROPERTIES, write_properties
from rendezvous.kernel.errors import OperationsError
from rendezvous.kernel.settings import KafkaSettings, state_dir
from rendezvous.kernel.trust import StackSecret, write_key
from rendezvous.operations.base import (
    Replica,
    RuntimeUnavailable,
    fetch_ready,
    replica_changes,
)
from rendezvous.operations.broker import free_port
from rendezvous.operations.images import LOCAL_BASE_IMAGE, RUNNER_IMAGE, has_image

__all__ = ["LABEL", "DeployError", "connect", "CLIENT_MOUNT", "SCORE_KEY_MOUNT", "DockerRuntime"]

LABEL = "io.rendezvous"


class DeployError(OperationsError):
    """A model could not be deployed, scaled or stopped; the message says what to change."""


def connect(timeout: float = 10.0):
    """A Docker client that has answered a ping, or :class:`RuntimeUnavailable` saying what to do."""
    import docker
    import docker.errors

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise RuntimeUnavailable(
            f"cannot reach the Docker engine at {where} ({exc}). Start it (systemctl start docker, or "
            f"`dockerd &` as root; Debian: apt-get install docker.io), set DOCKER_HOST, or run models as local "
            f"processes with `deploy: {{runtime: process}}` and `rendezvous up`.") from None


CLIENT_MOUNT = "/etc/rendezvous/kafka"
SCORE_KEY_MOUNT = "/etc/rendezvous/score.key"
_CONTAINER_UID = 65534


def _hand_to_container(path: Path, directory: bool = False) -> None:
    """Readable by the container's user only: owned by it when we are root, else world-readable
    (the private state directory above still keeps other host users out)."""
    if os.geteuid() == 0:
        os.chown(path, _CONTAINER_UID, _CONTAINER_UID)
        path.chmod(0o500 if directory else 0o400)
    else:
        path.chmod(0o755 if directory else 0o444)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)


class DockerRuntime:
    """Deploys, scales, lists and stops model replicas as containers of one stack."""

    def __init__(self, kafka: KafkaSettings | None, topic_prefix: str = "rendezvous", client=None,
                 max_restarts: int = 5, stop_timeout_s: int = 10, secret: StackSecret | None = None) -> None:
        self.kafka, self.topic_prefix = kafka, topic_prefix
        self.secret = secret  # each replica gets its model's key (mounted read-only), never the secret
        self.client = client or connect()
        self.max_restarts, self.stop_timeout_s = max_restarts, stop_timeout_s

    # ------------------------------------------------------------------ deploy and scale

    def deploy(self, spec_path: Path, replicas: int | None = None) -> list[str]:
        """Run ``replicas`` (default: the spec's) of a model version; deploying again rescales it."""
        if self.kafka is None:
            raise DeployError("deploying needs the broker the replicas will consume from")
        spec_path = Path(spec_path).resolve()
        spec = load_spec(spec_path)
        image = self._image_for(spec)
        wanted = spec.replicas if replicas is None else replicas
        running = {int(c.labels[f"{LABEL}.replica"]): c for c in self._containers(spec.name, spec.version)}
        start, stop = replica_changes(list(running), wanted)
        for index in start:
            self._start_replica(spec_path, spec, image, index)
        for index in stop:
            self._remove(running[index])
        return [c.name for c in self._containers(spec.name, spec.version)]

    def scale(self, model: str, replicas: int, version: str | None = None) -> list[str]:
        version = self._only_version(model, version)
        spec_path = Path(self._containers(model, version)[0].labels[f"{LABEL}.spec"])
        if not spec_path.is_file():
            raise DeployError(f"{model} {version} was deployed from {spec_path}, which is gone; deploy its spec again")
        return self.deploy(spec_path, replicas)

    def stop_model(self, model: str, version: str | None = None) -> list[str]:
        containers = self._containers(model, version)
        if not containers:
            raise DeployError(f"no replicas of {model}{' ' + version if version else ''} in stack {self.topic_prefix!r}; "
                              "see `rendezvous models`")
        for container in containers:
            self._remove(container)
        return [c.name for c in containers]

    def stop_all(self) -> list[str]:
        containers = self._containers()
        for container in containers:
            self._remove(container)
        return [c.name for c in containers]

    # ------------------------------------------------------------------ observe

    def replicas(self, model: str | None = None) -> list[Replica]:
        return [self._replica(c) for c in self._containers(model)]

    def logs(self, model: str, tail: int = 50) -> dict[str, str]:
        return {c.name: c.logs(tail=tail).decode(errors="replace") for c in self._containers(model)}

    def wait_ready(self, names: list[str], timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        waiting = set(names)
        while waiting and time.monotonic() < deadline:
            for replica in self.replicas():
                if replica.name not in waiting:
                    continue
                if replica.health == "running":
                    waiting.discard(replica.name)
                elif replica.health == "failed":
                    raise DeployError(f"{replica.name} failed while starting: {replica.detail}; "
                                      f"see `rendezvous logs {replica.model}`")
            time.sleep(0.2)
        return sorted(waiting)

    def pid_of(self, name: str) -> int:
        """Host PID of a replica's init process (for tests that crash one on purpose)."""
        container = self.client.containers.get(name)
        container.reload()
        return int(container.attrs["State"]["Pid"])

    # ------------------------------------------------------------------ internals

    def _containers(self, model: str | None = None, version: str | None = None) -> list:
        filters = [f"{LABEL}.stack={self.topic_prefix}", f"{LABEL}.role=model"]
        filters += [f"{LABEL}.model={model}"] if model else []
        filters += [f"{LABEL}.version={version}"] if version else []
        found = self.client.containers.list(all=True, filters={"label": filters})
        return sorted(found, key=lambda c: (c.labels[f"{LABEL}.model"], c.labels[f"{LABEL}.version"],
                                            int(c.labels[f"{LABEL}.replica"])))

    def _only_version(self, model: str, version: str | None) -> str:
        versions = sorted({c.labels[f"{LABEL}.version"] for c in self._containers(model, version)})
        if not versions:
            raise DeployError(f"no replicas of {model}{' ' + version if version else ''} in stack "
                              f"{self.topic_prefix!r}; deploy its spec first (`rendezvous deploy SPEC`)")
        if len(versions) > 1:
            raise DeployError(f"{model} runs versions {', '.join(versions)}; say which with --version")
        return versions[0]

    def _image_for(self, spec: ModelSpec) -> str:
        import docker.errors

        if spec.build:
            context = (spec.base_dir / spec.build).resolve()
            tag = f"rendezvous-model/{_slug(spec.name).lower()}:{_slug(spec.version)}"
            try:
                self.client.images.build(path=str(context), tag=tag, buildargs={"RUNNER_IMAGE": RUNNER_IMAGE}, rm=True)
            except (docker.errors.BuildError, docker.errors.APIError, TypeError) as exc:
                raise DeployError(f"model {spec.name}: building {context} failed: {exc}") from None
            return tag
        image = spec.image or RUNNER_IMAGE
        if not has_image(self.client, image):
            hint = ("build it with `rendezvous image build` (on a machine that cannot pull images, first "
                    f"`rendezvous image base`, then `rendezvous image build --base {LOCAL_BASE_IMAGE}`)"
                    if image == RUNNER_IMAGE else f"pull or build it (docker pull {image})")
            raise DeployError(f"model {spec.name}: image {image} is not on this machine; {hint}")
        return image

    def _start_replica(self, spec_path: Path, spec: ModelSpec, image: str, index: int) -> None:
        import docker.errors

        for field, relative in (("artifact", spec.artifact), ("card", spec.card)):
            if relative and not (spec.base_dir / relative).resolve().is_relative_to(spec.base_dir):
                raise DeployError(f"{spec_path}: {field}: {relative} is outside the spec's directory, which is "
                                  "all a container sees (mounted at /model); move it next to the spec")
        if not spec.base_dir.stat().st_mode & 0o005:
            raise DeployError(f"{spec.base_dir} is mounted at /model but the container's user (uid 65534) cannot "
                              f"read it: chmod o+rx {spec.base_dir} (and o+r the files in it)")
        name = _slug(f"{self.topic_prefix}-{spec.name}-{spec.version}-{index}")
        port = free_port()
        k, limits = self.kafka, spec.resources
        command = ["--spec", f"/model/{spec_path.name}", "--broker", k.bootstrap, "--topic-prefix", self.topic_prefix,
                   "--fetch-wait-ms", str(k.fetch_wait_ms), "--producer-linger-ms", str(k.producer_linger_ms),
                   "--fetch-min-bytes", str(k.fetch_min_bytes), "--http-host", "127.0.0.1", "--http-port", str(port)]
        volumes = {str(spec.base_dir): {"bind": "/model", "mode": "ro"}}
        if k.client:
            volumes[str(self._client_dir())] = {"bind": CLIENT_MOUNT, "mode": "ro"}
            command += ["--kafka-config", f"{CLIENT_MOUNT}/client.properties"]
        if self.secret is not None:
            volumes[str(self._score_key_file(spec.name))] = {"bind": SCORE_KEY_MOUNT, "mode": "ro"}
            command += ["--score-key-file", SCORE_KEY_MOUNT]
        labels = {f"{LABEL}.stack": self.topic_prefix, f"{LABEL}.role": "model", f"{LABEL}.model": spec.name,
                  f"{LABEL}.version": spec.version, f"{LABEL}.replica": str(index), f"{LABEL}.spec": str(spec_path),
                  f"{LABEL}.http-port": str(port), f"{LABEL}.memory": limits.memory}
        try:
            self.client.containers.run(
                image, command, name=name, detach=True, labels=labels,
                environment={**spec.env, "RENDEZVOUS_INSTANCE": f"{socket.gethostname()}/{name}"},
                volumes=volumes,
                network_mode="host", init=True, user="65534:65534", privileged=False,
                security_opt=["no-new-privileges:true"], cap_drop=["ALL"], read_only=True,
                tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"},
                nano_cpus=int(limits.cpus * 1e9), mem_limit=limits.memory_bytes(),
                memswap_limit=limits.memory_bytes(), pids_limit=limits.pids,
                restart_policy={"Name": "on-failure", "MaximumRetryCount": self.max_restarts},
                stop_signal="SIGTERM", log_config={"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise DeployError(f"a container named {name} already exists outside rendezvous' control; "
                                  f"remove it (docker rm -f {name})") from None
            raise DeployError(f"the Docker engine refused to start {name}: {exc.explanation or exc}") from None

    def _score_key_file(self, model: str) -> Path:
        """The model's key, where only the container's user can read it (as the client files)."""
        assert self.secret is not None
        directory = state_dir() / "model-keys" / _slug(self.topic_prefix)
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"{_slug(model)}.key"
        path.unlink(missing_ok=True)  # a read-only copy from an earlier deploy
        write_key(path, self.secret.model_key(model))
        _hand_to_container(path)
        return path

    def _client_dir(self) -> Path:
        """The Kafka client properties and the files they name, as the containers see them.

        Mounted read-only at ``CLIENT_MOUNT``: never in the image, the labels or the
        environment. The container's user (uid 65534) must read them; the host copy
        lives under the user's private state directory (mode 0700), so no other host
        user can.
        """
        assert self.kafka is not None
        directory = state_dir() / "kafka-client" / _slug(self.topic_prefix)
        directory.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(parents=True, exist_ok=True)
        props = self.kafka.client.properties()
        for key in FILE_PROPERTIES:
            if key in props:
                source = Path(props[key])
                target = directory / f"{key.replace('.', '-')}{source.suffix}"
                target.unlink(missing_ok=True)  # a read-only copy from an earlier deploy
                shutil.copyfile(source, target)
                _hand_to_container(target)
                props[key] = f"{CLIENT_MOUNT}/{target.name}"
        _hand_to_container(write_properties(directory / "client.properties", props))
        _hand_to_container(directory, directory=True)
        return directory

    def _remove(self, container) -> None:
        import docker.errors

        try:
            container.stop(timeout=self.stop_timeout_s)  # SIGTERM: the runner flushes scores and commits
            container.remove(force=True)
        except docker.errors.NotFound:
            pass

    def _replica(self, container) -> Replica:
        container.reload()
        labels, state = container.labels, container.attrs["State"]
        url = f"http://127.0.0.1:{labels[f'{LABEL}.http-port']}"
        restarts = int(container.attrs.get("RestartCount", 0))
        status, code = state["Status"], state.get("ExitCode")
        detail = ""
        if state.get("OOMKilled"):
            detail = f"killed for exceeding its memory limit ({labels.get(f'{LABEL}.memory', '?')})"
        elif code:
            detail = f"exit code {code}"
        if status == "running":
            health = "running" if fetch_ready(url) else "starting"
        elif status == "restarting":
            health = "restarting"
        elif status in ("exited", "dead") and (code or state.get("OOMKilled")):
            limit = container.attrs["HostConfig"].get("RestartPolicy", {}).get("MaximumRetryCount", self.max_restarts)
            health = "failed" if restarts >= limit or status == "dead" else "restarting"
        elif status == "created":
            health = "starting"
        else:
            health = "stopped"
        return Replica(container.name, labels[f"{LABEL}.model"], labels[f"{LABEL}.version"],
                       int(labels[f"{LABEL}.replica"]), health, restarts, url, detail, container.short_id)
