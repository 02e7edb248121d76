"""Who is running, where: every service announces itself on the presence topic.

Each service (rendezvous worker, model replica, decoy, gateway) keeps one record
on ``PREFIX.presence``, keyed by its instance: what it is, its host and pid, the
URLs it serves (metrics, status, the gateway's HTTP and gRPC), and what it has
in force (a worker's policy version). It writes the record when it starts, again
whenever that description changes (a worker adopting a policy says so within
half a second), and every ``every_s`` seconds as a heartbeat; it deletes it (a
tombstone) when it stops. The topic is compacted, so a reader gets one record per
instance; one whose heartbeat is three intervals old is shown as gone (killed,
or cut off from the broker). Kafka Connect keeps its workers' status the same way.

``rendezvous status`` and ``rendezvous policy apply`` read it with :func:`read_presence`.

>>> p = Presence("model", "boosted", "host/7", "host", 7, {"status": "http://127.0.0.1:8000"}, 0.0, 9000.0, 5000.0,
...              {"version": "1.0.0"})
>>> p.alive(now_ms=20_000.0), p.alive(now_ms=30_000.0)
(True, False)
>>> decode_presence(encode_presence(p)) == p
True
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaException, Producer

from rendezvous.kernel.clock import now_ms
from rendezvous.kernel.kafka import produce, read_range, since_offsets
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics

__all__ = ["LOG_FILE_ENV", "Announcer", "Presence", "decode_presence", "encode_presence", "read_presence", "service_url",
           "status_urls", "who"]

log = logging.getLogger("rendezvous.presence")

#: A record whose heartbeat is this many intervals old is taken for gone.
MISSED_BEATS = 3
#: Set by a supervisor that sends this process's output to a file: announced, so `rendezvous logs` finds it.
LOG_FILE_ENV = "RENDEZVOUS_LOG_FILE"


class Presence(msgspec.Struct, frozen=True):
    role: str  # rendezvous | model | decoy | gateway
    name: str  # the worker's id, the model's name, "decoy", the gateway's id
    instance: str  # unique: the record's key
    host: str
    pid: int
    urls: dict[str, str]  # what it serves: {"metrics": ..., "status": ..., "http": ..., "grpc": ...}
    started_ms: float
    at_ms: float  # when this record was written
    every_ms: float  # its heartbeat interval
    details: dict[str, Any] = {}  # a model's version, a worker's policy and partitions

    def alive(self, now_ms: float) -> bool:
        return now_ms - self.at_ms <= MISSED_BEATS * self.every_ms


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Presence)


def encode_presence(p: Presence) -> bytes:
    return _encoder.encode(p)


def decode_presence(value: bytes) -> Presence:
    return _decoder.decode(value)


def service_url(host: str, port: int, scheme: str = "http") -> str:
    """The URL another machine reaches a service bound to ``host`` at: a wildcard address names this host."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def status_urls(host: str, port: int) -> dict[str, str]:
    """The URLs of a :class:`~rendezvous.kernel.status.StatusServer` bound to ``host:port``."""
    base = service_url(host, port)
    return {"metrics": f"{base}/metrics", "status": f"{base}/info"}


def who() -> str:
    """This process, as an instance name: ``HOST/PID``."""
    return f"{socket.gethostname()}/{os.getpid()}"


class Announcer:
    """Keeps one service's :class:`Presence` record current, on a daemon thread, until :meth:`stop`.

    ``describe`` returns the record's ``urls`` and ``details``; it is called every half second and the
    record is written when they change, or when a heartbeat is due.
    """

    def __init__(self, kafka: KafkaSettings, topics: Topics, role: str, name: str, instance: str,
                 describe: Callable[[], tuple[dict[str, str], dict[str, Any]]], every_s: float = 5.0,
                 clock: Callable[[], float] = now_ms) -> None:
        self.topic, self.role, self.name, self.instance = topics.presence, role, name, instance
        self.describe, self.every_ms, self.clock = describe, every_s * 1000.0, clock
        self.started_ms = clock()
        self._producer = Producer(kafka.producer(**{"linger.ms": 0, "enable.idempotence": False, "acks": 1}))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presence", daemon=True)
        self._last: tuple[dict[str, str], dict[str, Any]] | None = None
        self._last_ms = 0.0

    def start(self) -> Announcer:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Delete the record (the instance is gone on purpose), within ``timeout_s``."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        try:
            produce(self._producer, self.topic, None, self.instance.encode())
            self._producer.flush(timeout_s)
        except (KafkaException, BufferError) as exc:  # a broker away at shutdown: the record ages out
            log.debug("presence tombstone not written: %s", exc)

    def _run(self) -> None:
        self.beat()  # at once: a service is listed as soon as it runs
        while not self._stop.wait(0.5):
            self.beat()
        self._producer.flush(1)

    def beat(self) -> None:
        """Write the record if it changed or a heartbeat is due."""
        try:
            described = self.describe()
        except Exception as exc:  # noqa: BLE001 - a description that fails must not end the heartbeat
            log.debug("presence: describe failed: %s", exc)
            return
        now = self.clock()
        if described == self._last and now - self._last_ms < self.every_ms:
            return
        urls, details = described
        if os.environ.get(LOG_FILE_ENV):
            details = {**details, "log": os.environ[LOG_FILE_ENV]}
        record = Presence(self.role, self.name, self.instance, socket.gethostname(), os.getpid(), urls,
                          self.started_ms, now, self.every_ms, details)
        try:
            produce(self._producer, self.topic, encode_presence(record), self.instance.encode())
        except (KafkaException, BufferError) as exc:
            log.debug("presence not written: %s", exc)
            return
        self._producer.poll(0)
        self._last, self._last_ms = described, now


def read_presence(kafka: KafkaSettings, topics: Topics, timeout_s: float = 10.0) -> list[Presence]:
    """The latest record of every instance that has not deleted its own, by role and name."""
    consumer = Consumer(kafka.consumer(topics.reader_group("presence"), **{"enable.auto.commit": False}))
    latest: dict[bytes, Presence | None] = {}
    try:
        ranges = since_offsets(consumer, topics.presence, None, timeout_s)
        for message in read_range(consumer, topics.presence, ranges, timeout_s):
            key, value = message.key() or b"", message.value()
            try:
                latest[key] = decode_presence(value) if value is not None else None
            except msgspec.DecodeError:
                continue  # not ours: ignored, like any stranger's record
    finally:
        consumer.close()
    return sorted((p for p in latest.values() if p is not None), key=lambda p: (p.role, p.name, p.instance))
