"""What every embedded broker engine shares: a child process on loopback, started and stopped cleanly.

An engine (:mod:`~rendezvous.operations.kafka_broker`, :mod:`~rendezvous.operations.tansu`)
says how to launch its broker; this base class picks free ports, waits until the
broker serves, forwards nothing from the terminal (the broker is in its own
session) and takes it down with SIGTERM, or SIGKILL after ``stop``'s timeout.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import ClassVar

from rendezvous.kernel.errors import BrokerUnavailable
from rendezvous.operations.supervisor import die_with_parent

__all__ = ["EmbeddedBroker", "BrokerError", "LOOPBACK", "free_port", "port_open"]

LOOPBACK = "127.0.0.1"


class BrokerError(BrokerUnavailable):
    """The embedded broker could not be found, started, or reached."""


def free_port(host: str = LOOPBACK, avoid: Collection[int] = ()) -> int:
    """A TCP port that is free on ``host`` right now, and not one of ``avoid``: ports chosen but not bound yet,
    which the system may hand out again (seen: Kafka's broker and controller listeners given one port)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class PortTaken(Exception):
    """A chosen free port was taken by another process before the broker could bind it."""


class EmbeddedBroker:
    """A broker engine run as a child process on loopback. Subclasses give :meth:`_launch`.

    ``port`` 0 picks a free port (retried if another process takes it first).
    ``host``: the address it listens on (loopback by default; 0.0.0.0 in a container).
    ``advertised_host``/``advertised_port``: what clients are told to connect to, when
    that differs (a container's service name; a TLS terminator in front). None: the same.
    """

    #: The name ``--engine`` takes.
    engine: ClassVar[str] = ""
    #: The ``fetch.wait.max.ms`` its consumers should use: how long an empty fetch may wait.
    fetch_wait_ms: ClassVar[int] = 500

    def __init__(self, port: int = 0, host: str = LOOPBACK, log_path: Path | None = None,
                 advertised_port: int | None = None, advertised_host: str | None = None) -> None:
        if host in ("0.0.0.0", "::") and not advertised_host:
            raise BrokerError(f"listening on {host}, the broker needs a host name to give clients",
                              hint="pass --advertise HOST (e.g. the container's service name)")
        self.port, self.host, self.log_path, self.advertised_port = port, host, log_path, advertised_port
        self.advertised_host = advertised_host or host
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def local_host(self) -> str:
        """Where this machine reaches the broker (loopback when it listens on every interface)."""
        return LOOPBACK if self.host in ("0.0.0.0", "::") else self.host

    # ------------------------------------------------------------------ for engines

    def _launch(self, port: int) -> list[str]:
        """The command line that runs the broker on ``port``; may prepare files first."""
        raise NotImplementedError

    def _ports(self) -> list[int]:
        """Every port the broker binds (a port taken by someone else means: try other ports)."""
        return [self.port]

    def _serving(self) -> bool:
        """True once the broker answers clients, not only accepts connections."""
        return port_open(self.local_host, self.port)

    def _env(self) -> dict[str, str] | None:
        return None

    def _cleanup(self) -> None:
        """Called after the process has stopped."""

    # ------------------------------------------------------------------ lifecycle

    @property
    def bootstrap(self) -> str:
        """The address clients use (the advertised one)."""
        return f"{self.advertised_host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        """None while it runs (or before it started); its exit code once it has exited."""
        return self._process.poll() if self._process else None

    def describe(self) -> str:
        """One line for people: the engine and where its data is."""
        return self.engine

    def start(self, timeout: float = 60.0) -> str:
        """Start the broker and wait until it serves; returns its bootstrap address."""
        if self.port != 0:
            if port_open(self.local_host, self.port):
                raise BrokerError(f"port {self.port} on {self.host} is already in use",
                                  hint="pass another --port, or stop what listens there")
            return self._start(self.port, timeout)
        for _ in range(3):
            try:
                return self._start(free_port(self.host), timeout)
            except PortTaken:
                continue
        raise BrokerError(f"the {self.engine} broker could not bind a free port three times in a row")

    def _start(self, port: int, timeout: float) -> str:
        self.port = port
        argv = self._launch(port)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(),
                start_new_session=True,  # a Ctrl-C in the terminal is ours to forward, not the broker's
                preexec_fn=die_with_parent,  # and if we are killed, the broker goes too
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = time.monotonic() + timeout
        where = f"; see {self.log_path}" if self.log_path else ""
        while not (port_open(self.local_host, self.port) and self._serving()):
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                self._cleanup()
                if any(port_open(self.local_host, p) for p in self._ports()):  # someone else listens there
                    raise PortTaken()
                raise BrokerError(f"the {self.engine} broker exited with code {code} while starting{where}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"the {self.engine} broker did not serve on {self.bootstrap} within {timeout:.0f}s{where}")
            time.sleep(0.05)
        return self.bootstrap

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, and SIGKILL if it has not exited within ``timeout`` seconds."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None:
            self._cleanup()

    def wait(self) -> int:
        assert self._process is not None
        return self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
