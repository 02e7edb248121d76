"""What every runtime offers for model replicas, whichever engine runs them.

Two runtimes implement :class:`ModelRuntime`: :class:`~rendezvous.operations.process.ProcessRuntime`
(local processes under a supervisor, the embedded default) and
:class:`~rendezvous.operations.docker.DockerRuntime` (containers through the Docker
Engine API). A stack file's ``deploy.runtime`` picks one.
"""

from __future__ import annotations

import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

from rendezvous.kernel.errors import OperationsError

__all__ = ["Health", "Replica", "ModelRuntime", "replica_changes", "RuntimeUnavailable", "fetch_ready"]

#: running: up and consuming; starting: up, not yet assigned partitions; restarting: between
#: restarts after a crash; failed: crashed too often, or killed for exceeding its memory, and left
#: down; stopped: exited cleanly.
Health = Literal["running", "starting", "restarting", "failed", "stopped"]


@dataclass(frozen=True)
class Replica:
    name: str
    model: str
    version: str
    index: int
    health: Health
    restarts: int
    status_url: str | None  # the runner's /healthz, /ready, /metrics
    detail: str = ""  # why it is not running: exit code, OOM kill, ...
    engine_id: str = ""  # container id or process id

    def as_dict(self) -> dict:
        return asdict(self)


class ModelRuntime(Protocol):
    def deploy(self, spec_path: Path, replicas: int | None = None) -> list[str]:
        """Start replicas of the model a spec describes; returns their names."""

    def scale(self, model: str, replicas: int, version: str | None = None) -> list[str]:
        """Add or remove replicas so ``replicas`` run; returns the names that now run."""

    def replicas(self, model: str | None = None) -> list[Replica]:
        ...

    def logs(self, model: str, tail: int = 50) -> dict[str, str]:
        ...

    def stop_model(self, model: str, version: str | None = None) -> list[str]:
        """Stop and remove a model's replicas (every version unless one is named)."""

    def wait_ready(self, names: list[str], timeout: float = 60.0) -> list[str]:
        """Wait until the named replicas are ready; returns those that are not."""


def replica_changes(running: list[int], wanted: int) -> tuple[list[int], list[int]]:
    """Which replica indexes to start and which to stop so that ``wanted`` run.

    New replicas fill the lowest free indexes; the highest go first when scaling down.

    >>> replica_changes([0, 2], 4)
    ([1, 3], [])
    >>> replica_changes([0, 1, 2], 1)
    ([], [2, 1])
    """
    taken = set(running)
    free = (i for i in range(wanted + len(taken)) if i not in taken)
    start = [next(free) for _ in range(max(0, wanted - len(taken)))]
    return start, sorted(taken, reverse=True)[: max(0, len(taken) - wanted)]


class RuntimeUnavailable(OperationsError):
    """The engine a runtime drives cannot be reached."""


def fetch_ready(status_url: str | None, timeout: float = 0.5) -> bool:
    """Whether a component's status endpoint says it is ready."""
    if not status_url:
        return False
    try:
        with urllib.request.urlopen(f"{status_url}/ready", timeout=timeout) as reply:
            return reply.status == 200
    except (OSError, ValueError):
        return False

