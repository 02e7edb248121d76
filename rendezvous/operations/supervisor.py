"""Keeps local processes running: start, watch, restart with backoff, give up on crash loops.

The embedded runtime's equivalent of a container engine's restart policy. A
child that exits unasked is restarted after a backoff that doubles up to a cap;
one that exits ``max_restarts`` times within ``window_s`` is marked failed and
left down (a model that keeps crashing is a bug to fix, not a process to spin).
Children die with the supervisor (Linux PR_SET_PDEATHSIG), so nothing outlives it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rendezvous.kernel.presence import LOG_FILE_ENV
from rendezvous.kernel.status import PORT_FILE_ENV
from rendezvous.operations.base import fetch_ready

__all__ = ["State", "die_with_parent", "ChildSpec", "Child", "Supervisor"]

log = logging.getLogger("rendezvous.supervisor")

State = Literal["running", "backoff", "failed", "stopped"]

try:  # resolved here, so the forked child only makes the call
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:  # pragma: no cover - not Linux
    _prctl = None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when its parent dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class ChildSpec:
    name: str  # unique, e.g. "model/boosted/0"
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    env_drop_prefixes: tuple[str, ...] = ()  # inherited variables it must not see (secrets it gets by file)
    #: Its status endpoint, for /ready. 0: the child binds a free port itself and writes it to the
    #: file named by $RENDEZVOUS_PORT_FILE (see kernel.status.announce_port), so that no other
    #: process can take the port between our choosing it and the child binding it.
    http_port: int | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def port_file(self) -> Path:
        return self.log_path.with_suffix(".port")


@dataclass
class Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    state: State = "stopped"
    restarts: int = 0
    exits: deque = field(default_factory=deque)  # monotonic times of recent unasked exits
    next_start: float = 0.0
    last_exit_code: int | None = None
    _bound_port: int | None = None  # the port the running process announced (http_port 0)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    @property
    def http_port(self) -> int | None:
        """Where its status endpoint listens; None while a child that binds its own has not said yet."""
        if self.spec.http_port != 0:
            return self.spec.http_port
        if self._bound_port is None:
            try:
                self._bound_port = int(self.spec.port_file.read_text())
            except (OSError, ValueError):  # not written yet (it is written whole, by a rename)
                return None
        return self._bound_port


class Supervisor:
    def __init__(self, max_restarts: int = 5, window_s: float = 60.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.max_restarts, self.window_s = max_restarts, window_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self._children: dict[str, Child] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ children

    def add(self, spec: ChildSpec) -> Child:
        with self._lock:
            if spec.name in self._children:
                raise ValueError(f"a child named {spec.name} is already supervised")
            child = self._children[spec.name] = Child(spec)
            self._start(child)
            return child

    def remove(self, name: str, timeout: float = 10.0) -> None:
        with self._lock:
            child = self._children.pop(name, None)
        if child is not None:
            _terminate([child], timeout)

    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children.values())

    def get(self, name: str) -> Child | None:
        return self._children.get(name)

    def is_ready(self, name: str, timeout: float = 0.5) -> bool:
        child = self._children.get(name)
        if child is None or child.state != "running" or child.http_port is None:
            return False
        return fetch_ready(f"http://127.0.0.1:{child.http_port}", timeout)

    def wait_ready(self, names: list[str], timeout: float) -> list[str]:
        """Wait until every named child is ready; returns the ones that are not."""
        deadline = time.monotonic() + timeout
        waiting = list(names)
        while waiting and time.monotonic() < deadline:
            waiting = [n for n in waiting if not self.is_ready(n)]
            failed = [n for n in waiting if self._children[n].state == "failed"]
            if failed:
                return waiting
            if waiting:
                time.sleep(0.1)
        return waiting

    # ------------------------------------------------------------------ watching

    def check(self) -> None:
        """One pass: notice exits, schedule restarts, start what is due."""
        now = time.monotonic()
        with self._lock:
            for child in self._children.values():
                if child.state == "running" and child.process is not None and child.process.poll() is not None:
                    self._on_exit(child, now)
                if child.state == "backoff" and now >= child.next_start:
                    child.restarts += 1
                    self._start(child)

    def _on_exit(self, child: Child, now: float) -> None:
        code = child.process.returncode if child.process else None
        child.last_exit_code = code
        child.exits.append(now)
        while child.exits and now - child.exits[0] > self.window_s:
            child.exits.popleft()
        if len(child.exits) >= self.max_restarts:
            child.state = "failed"
            log.error("%s exited %d times in %.0fs (last code %s): marked failed, not restarting; see %s",
                      child.spec.name, len(child.exits), self.window_s, code, child.spec.log_path)
            return
        delay = min(self.backoff_initial_s * 2 ** (len(child.exits) - 1), self.backoff_max_s)
        child.state, child.next_start = "backoff", now + delay
        log.warning("%s exited with code %s; restarting in %.1fs", child.spec.name, code, delay)

    def _start(self, child: Child) -> None:
        spec = child.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(spec.env_drop_prefixes or ("\0",))},
               **(spec.env or {})}
        if spec.http_port == 0:
            spec.port_file.unlink(missing_ok=True)  # a restarted child binds and announces afresh
            child._bound_port = None
            env[PORT_FILE_ENV] = str(spec.port_file)
        env[LOG_FILE_ENV] = str(spec.log_path)  # announced on the presence topic: `rendezvous logs` finds it
        with open(spec.log_path, "ab") as out:
            child.process = subprocess.Popen(
                spec.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=die_with_parent,
            )
        child.state = "running"

    def start_background(self, interval_s: float = 0.2) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.check()

        self._thread = threading.Thread(target=loop, name="supervisor", daemon=True)
        self._thread.start()

    def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM every child, wait up to ``timeout``, then SIGKILL what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        with self._lock:
            children = list(self._children.values())
        _terminate(children, timeout)


def _terminate(children: list[Child], timeout: float) -> None:
    for child in children:
        child.state = "stopped"
        if child.process is not None and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs of SIGTERM; killing it", child.spec.name, timeout)
            child.process.kill()
            child.process.wait()
