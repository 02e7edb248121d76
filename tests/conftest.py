"""Fixtures: a real broker for the session (Apache Kafka; Tansu where no Java 17+ runs), and whole
systems of real processes.

Every system gets its own topic prefix (hence its own topics and consumer groups)
on the shared broker, its own ports on loopback, and is torn down by PID.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from rendezvous.kernel.admin import ensure_topics
from rendezvous.kernel.kafka import read_range, since_offsets
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.wire import WireError, decode_result, decode_score_batch
from rendezvous.operations.broker import EmbeddedBroker, embedded_broker
from rendezvous.operations.process import ProcessRuntime
from rendezvous.tools.client import RequestSender, ResultCollector

REPO = Path(__file__).resolve().parent.parent
_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def rendezvous_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every command the tests run keeps its records (broker.json, secrets.json) in a home of this
    session's, not the user's ~/.rendezvous, where sessions running side by side (pytest -n) would share them."""
    home = tmp_path_factory.mktemp("rendezvous-home")
    before = os.environ.get("RENDEZVOUS_HOME")
    os.environ["RENDEZVOUS_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("RENDEZVOUS_HOME", None)
    else:
        os.environ["RENDEZVOUS_HOME"] = before


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The engine ``rendezvous up`` would pick here (RENDEZVOUS_BROKER_ENGINE chooses another)."""
    embedded = embedded_broker(log_path=tmp_path_factory.mktemp("broker") / "broker.log")
    embedded.start()
    yield embedded
    embedded.stop()


def settings_for(broker: EmbeddedBroker, **kwargs: Any) -> KafkaSettings:
    """Client settings for ``broker``, with the fetch wait its engine rewards (as ``up`` gives its children)."""
    return KafkaSettings(broker.bootstrap, fetch_wait_ms=broker.fetch_wait_ms, **kwargs)


@pytest.fixture
def kafka(broker: EmbeddedBroker) -> KafkaSettings:
    return settings_for(broker)


def fresh_topics(kafka: KafkaSettings, partitions: int = 4) -> Topics:
    topics = Topics.with_prefix(f"t{os.getpid()}-{next(_names)}")
    ensure_topics(kafka, topics, partitions)
    return topics


def scripted_spec(directory: Path, name: str, score: float, delay_ms: float = 0.0, batched: bool = False) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        version: "1"
        entry: containers.examples.synthetic:scripted
        options: {{name: {name}, score: {score}, delay_ms: {delay_ms}, batched: {str(batched).lower()}}}
    """))
    return path


def write_policy(directory: Path, text: str, name: str = "policy.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


#: The score each model of CHAIN_POLICY's chain answers with, as System.start_chain_models starts them.
CHAIN_SCORES = {"m1": 0.1, "m2": 0.2, "m3": 0.3}
CHAIN_POLICY = """\
    name: test-chain
    version: 1
    sla_ms: 100
    default: {score: 0.25}
    routing:
      strategy: fixed
      chain:
        - {model: m3, wait_ms: 30}
        - {model: m2, wait_ms: 30}
        - {model: m1}
"""


def cli(system: System, *args: str) -> subprocess.CompletedProcess:
    """Run ``rendezvous ARGS`` against a system's broker and topics."""
    return subprocess.run([sys.executable, "-m", "rendezvous", *args, "--broker", system.kafka.bootstrap,
                           "--topic-prefix", system.topics.namespace], capture_output=True, text=True, timeout=120)


class ProcessLines:
    """A child process's stderr, read on a thread, so that waiting for a line is bounded."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process, self.seen = process, []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(line) for line in process.stderr], daemon=True).start()

    def wait_for(self, text: str, timeout: float = 90.0) -> None:
        """Until a line contains ``text``; fails, showing what was printed, if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            assert time.monotonic() < deadline and self.process.poll() is None, self.text()
            try:
                self.seen.append(self._lines.get(timeout=0.5))
            except queue.Empty:
                pass

    def text(self) -> str:
        return "".join(self.seen)


def eventually(check, timeout: float = 15.0, every: float = 0.2):  # noqa: ANN001, ANN201
    """``check()``'s first truthy value within ``timeout`` seconds, else its last value.

    A check that raises is tried again (a service still starting refuses connections);
    if it raised on the last try, that error is raised.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value, error = check(), None
        except Exception as exc:  # noqa: BLE001 - any failure of the check means "not yet"
            value, error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            if error is not None:
                raise error
            return value
        time.sleep(every)


def wait_until(check, what: str, timeout: float = 15.0, every: float = 0.1):  # noqa: ANN001, ANN201
    """``check()``'s first truthy value; fails the test saying ``what`` did not happen, and the last value, if none
    comes within ``timeout`` seconds."""
    try:
        value = eventually(check, timeout, every)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{what}: not within {timeout:g}s (last try raised {exc!r})")
    if not value:
        pytest.fail(f"{what}: not within {timeout:g}s (last value {value!r})")
    return value


def in_background(target, *args, what: str = "background work"):  # noqa: ANN001, ANN201
    """Run ``target(*args)`` on a thread; ``.join()`` on the result waits, bounded, and re-raises its error."""
    return _Background(target, args, what)


class _Background:
    def __init__(self, target, args: tuple, what: str) -> None:  # noqa: ANN001
        self.what, self.error = what, None

        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 120.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.what} did not finish within {timeout:g}s"
        if self.error is not None:
            raise self.error


def late_intake(result: Any) -> bool:
    """Whether the worker's record says the request reached it past its deadline (answered at once, by the default)."""
    return (result.detail or "").startswith("late intake")


class System:
    """Models, rendezvous workers and a client, as real processes against the real broker."""

    def __init__(self, kafka: KafkaSettings, directory: Path, partitions: int = 4, secret_file: Path | None = None) -> None:
        self.kafka, self.directory, self.partitions = kafka, directory, partitions
        self.topics = fresh_topics(kafka, partitions)
        self.runtime = ProcessRuntime(kafka, directory / "logs", self.topics.namespace, secret_file=secret_file)
        self.sender = RequestSender(kafka, self.topics)
        self.collector = ResultCollector(kafka, self.topics, partitions).start()
        self._next_worker = 0

    # -- components

    def start_models(self, *specs: Path, replicas: int = 1) -> list[str]:
        return [n for spec in specs for n in self.runtime.start_model(spec, replicas)]

    def start_chain_models(self) -> list[str]:
        """CHAIN_POLICY's models, m1, m2 and m3, each answering with its score in CHAIN_SCORES."""
        return self.start_models(*(scripted_spec(self.directory, m, s) for m, s in CHAIN_SCORES.items()))

    def start_workers(self, policy: Path, count: int = 1, extra: list[str] | None = None) -> list[str]:
        first, self._next_worker = self._next_worker, self._next_worker + count
        return self.runtime.start_rendezvous(policy, count, extra, first_index=first)

    def wait_ready(self, names: list[str], timeout: float = 60.0) -> None:
        not_ready = self.runtime.wait_ready(names, timeout)
        assert not not_ready, f"not ready: {not_ready}; logs in {self.directory / 'logs'}"

    def pid(self, name: str) -> int:
        child = self.runtime.supervisor.get(name)
        assert child is not None and child.pid is not None, name
        return child.pid

    def signal(self, name: str, sig: signal.Signals) -> None:
        os.kill(self.pid(name), sig)

    def stats(self, name: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url(name)}/stats", timeout=5) as response:
            return json.loads(response.read())

    def url(self, name: str, timeout: float = 30.0) -> str:
        """The base URL of a child's HTTP endpoint, once it has bound its port and said which."""
        port = wait_until(lambda: self.runtime.supervisor.get(name).http_port, f"{name} announces its port", timeout)
        return f"http://127.0.0.1:{port}"

    # -- traffic

    def send(self, requests: list[tuple[str, dict[str, Any]]], rate: float = 0.0) -> None:
        self.sender.send(requests, rate)

    def ask(self, request_id: str, features: dict[str, Any], timeout: float = 10.0):
        """Send one request and return its result."""
        self.send([(request_id, features)])
        assert self.collector.wait_for([request_id], timeout), f"no result for {request_id}"
        return self.collector.results[request_id][0].result

    def ask_in_time(self, prefix: str, features: dict[str, Any], attempts: int = 5, timeout: float = 10.0):
        """The result of the first of up to ``attempts`` requests that reached the worker before its deadline.

        A request the worker read past its deadline (a busy machine: the sender, the broker or the worker was not
        scheduled) is answered at once by the default, whatever the models do, and its result says so ("late
        intake", by the worker's own clock). Such a result says nothing about how the worker chooses between
        models, so a test of that choice asks again, with a new id.
        """
        for _ in range(attempts):
            result = self.ask(f"{prefix}-{time.monotonic_ns()}", features, timeout)
            if not late_intake(result):
                return result
        pytest.fail(f"{attempts} requests in a row reached the worker past their deadline; the last: {result.detail}")

    def results_for(self, ids: list[str], timeout: float = 30.0) -> dict[str, list]:
        """Every result of each id: fails if one has none within ``timeout``. Results are read to the end of
        the results topic first, so a second answer, if one was written, is here too."""
        if not self.collector.wait_for(ids, timeout):
            missing = [rid for rid in ids if rid not in self.collector.results]
            pytest.fail(f"{len(missing)} of {len(ids)} requests got no result within {timeout:g}s, e.g. {missing[:5]}")
        assert self.collector.caught_up(timeout=15), "the results topic was not read to its end within 15 s"
        return {rid: [r.result for r in self.collector.results.get(rid, [])] for rid in ids}

    def send_in_background(self, requests: list[tuple[str, dict[str, Any]]], rate: float) -> _Background:
        return in_background(self.send, requests, rate, what=f"sending {len(requests)} requests at {rate:g}/s")

    def result_of(self, request_id: str, timeout: float = 15.0) -> Any:
        """The one result of ``request_id``, as written on the results topic (whoever sent the request)."""
        def find() -> list:
            return [decode_result(m.value()) for m in self.read_topic(self.topics.results) if m.key() == request_id.encode()]
        results = wait_until(find, f"a result for {request_id}", timeout)
        assert len(results) == 1, f"{len(results)} results for {request_id}"
        return results[0]

    def partition_of(self, request_id: str) -> int:
        """Where the request went (its result says): where its outcome must go."""
        return self.collector.results[request_id][0].partition if request_id in self.collector.results else 0

    def warm_up(self, timeout: float = 30.0) -> None:
        """One request answered end to end (also readies the sender's producer)."""
        rid = f"warmup-{time.monotonic_ns()}"
        self.send([(rid, {})])
        assert self.collector.wait_for([rid], timeout), "the system never answered a warm-up request"

    def read_topic(self, topic: str, timeout: float = 15.0) -> list:
        """Every record of ``topic``, read to its end as of now (fails if that takes longer than ``timeout``)."""
        consumer = Consumer(self.kafka.consumer(f"reader-{time.monotonic_ns()}", **{"enable.auto.commit": False}))
        try:
            return list(read_range(consumer, topic, since_offsets(consumer, topic, None, timeout), timeout))
        finally:
            consumer.close()

    def scored_by(self, request_id: str) -> set[str]:
        """The models whose scores for ``request_id`` are on the scores topic."""
        models = set()
        for message in self.read_topic(self.topics.scores):
            try:
                batch = decode_score_batch(message.value())
            except WireError:  # a test's deliberately broken record
                continue
            if any(s.request_id == request_id for s in batch.scores):
                models.add(batch.model)
        return models

    def produce_raw(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = 0) -> tuple[int, int]:
        """Produce one record; returns the (partition, offset) it landed at."""
        producer, landed = Producer(self.kafka.producer()), []
        producer.produce(topic, value, key, partition=partition,
                         on_delivery=lambda err, msg: landed.append((msg.partition(), msg.offset())))
        assert producer.flush(10) == 0 and landed
        return landed[0]

    def __enter__(self) -> System:
        return self

    def __exit__(self, *_: object) -> None:
        """Also when a fixture's setup fails: nothing it started is left running."""
        self.close()

    def close(self) -> None:
        # The client last: stopped first, it made the worker's own stop take 6 s instead of 1.4 (measured; why,
        # we do not know). The workers go before the models (ProcessRuntime.stop).
        self.runtime.stop()
        self.collector.stop()


@pytest.fixture
def system(kafka: KafkaSettings, tmp_path: Path) -> Iterator[System]:
    s = System(kafka, tmp_path)
    yield s
    s.close()
