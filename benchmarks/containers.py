"""Benchmark of models as containers against the same runner as a plain process.

    python -m benchmarks.containers [--quick] [--out benchmarks/results/containers.json]

Needs a running Docker engine (``dockerd &`` as root); builds the runner image if
it is missing or stale. Measures, for each runtime (process, docker):

1. deploy to first score: from the deploy call until the model's first score
   for a live request stream (50 requests/s) is on the scores topic; includes
   the runner's start, the consumer group join and the first fetch;
2. scores per second of one replica of the trivial model draining N
   pre-produced requests (first score started to last score finished, from the
   score records' own timestamps), and the ratio container / process, whose
   target is that containers cost at most 10% (process / container <= 1.1).

Trials alternate between the runtimes so drift on the machine hits both alike.
The floor, one consumer reading the same N requests bare, is measured too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition

from containers.examples.synthetic import __file__ as _synthetic
from rendezvous.kernel.admin import ensure_topics
from rendezvous.kernel.kafka import poll_batch
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.wire import ScoreBatch
from rendezvous.operations.broker import embedded_broker
from rendezvous.operations.docker import DockerRuntime, connect
from rendezvous.operations.images import ensure_runner_image
from rendezvous.operations.process import ProcessRuntime

PARTITIONS = 4
TRIVIAL = Path(_synthetic).parent / "trivial.yaml"
_trial = iter(range(1_000_000))


def say(text: str) -> None:
    print(f"[{time.strftime('%X')}] {text}", flush=True)


def fresh_topics(kafka: KafkaSettings) -> Topics:
    topics = Topics.with_prefix(f"bench-c{next(_trial)}")
    ensure_topics(kafka, topics, PARTITIONS)
    return topics


def prefill(kafka: KafkaSettings, topics: Topics, n: int) -> None:
    producer = Producer(kafka.producer(**{"linger.ms": 5}))
    for i in range(n):
        producer.produce(topics.requests, b'{"request_id":"r%d","features":{"x":1}}' % i, b"r%d" % i)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)


def read_scores(kafka: KafkaSettings, topics: Topics, until: int, timeout: float) -> list[ScoreBatch]:
    """Score records until ``until`` scores are in, or the timeout."""
    consumer = Consumer(kafka.consumer(f"reader-{time.monotonic_ns()}", **{"enable.auto.commit": False}))
    consumer.assign([TopicPartition(topics.scores, p, 0) for p in range(PARTITIONS)])
    batches, count, deadline = [], 0, time.monotonic() + timeout
    while count < until and time.monotonic() < deadline:
        for m in poll_batch(consumer, 1000, 0.2):
            if not m.error():
                batch = msgspec.json.decode(m.value(), type=ScoreBatch)
                batches.append(batch)
                count += len(batch.scores)
    consumer.close()
    return batches


def bare_consume(kafka: KafkaSettings, topics: Topics, n: int) -> float:
    consumer = Consumer(kafka.consumer(f"bare-{time.monotonic_ns()}", **{"enable.auto.commit": False}))
    consumer.assign([TopicPartition(topics.requests, p, 0) for p in range(PARTITIONS)])
    seen, started = 0, None
    while seen < n:
        messages = [m for m in poll_batch(consumer, 1000, 0.2) if not m.error()]
        if messages and started is None:
            started = time.perf_counter()
        seen += len(messages)
    elapsed = time.perf_counter() - started
    consumer.close()
    return n / elapsed


def runtime_for(kind: str, kafka: KafkaSettings, topics: Topics, workdir: Path, client):
    if kind == "docker":
        return DockerRuntime(kafka, topics.namespace, client)
    return ProcessRuntime(kafka, workdir / "logs", topics.namespace)


def stop(runtime) -> None:
    if isinstance(runtime, DockerRuntime):
        runtime.stop_all()
    else:
        runtime.stop()


def time_to_first_score(kind: str, kafka: KafkaSettings, workdir: Path, client) -> float:
    topics = fresh_topics(kafka)
    producer, stop_sending = Producer(kafka.producer()), threading.Event()

    def send() -> None:
        i = 0
        while not stop_sending.wait(0.02):
            producer.produce(topics.requests, b'{"request_id":"live%d","features":{}}' % i, b"live%d" % i)
            producer.poll(0)
            i += 1

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(1.0)  # the stream is flowing before the model exists
    runtime = runtime_for(kind, kafka, topics, workdir, client)
    started_ms = time.time() * 1000
    try:
        runtime.deploy(TRIVIAL, 1)
        batches = read_scores(kafka, topics, 1, timeout=120)
        if not batches:
            raise RuntimeError(f"{kind}: no score within 120 s")
        return min(s.finished_ms for b in batches for s in b.scores) - started_ms
    finally:
        stop_sending.set()
        sender.join()
        producer.flush(10)
        stop(runtime)


def drain_rate(kind: str, kafka: KafkaSettings, workdir: Path, client, n: int) -> tuple[float, float]:
    """(scores/s of one replica draining n requests, bare consumption of the same n requests/s)."""
    topics = fresh_topics(kafka)
    prefill(kafka, topics, n)
    floor = bare_consume(kafka, topics, n)
    runtime = runtime_for(kind, kafka, topics, workdir, client)
    try:
        runtime.deploy(TRIVIAL, 1)
        batches = read_scores(kafka, topics, n, timeout=300)
    finally:
        stop(runtime)
    scores = [s for b in batches for s in b.scores]
    if len({s.request_id for s in scores}) < n:
        raise RuntimeError(f"{kind}: only {len(scores)} of {n} requests scored")
    first = min(s.started_ms for s in scores)
    last = max(s.finished_ms for s in scores)
    return n / ((last - first) / 1000), floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer trials and requests.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/containers.json"))
    args = parser.parse_args()
    trials, n = (2, 50_000) if args.quick else (5, 200_000)
    client = connect()
    say("runner image: " + ensure_runner_image(client, progress=say))
    broker = embedded_broker()
    kafka = KafkaSettings(broker.start(), fetch_wait_ms=broker.fetch_wait_ms)
    out: dict[str, Any] = {"trials": trials, "requests_drained": n, "model": "trivial (constant score)"}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-containers-") as tmp:
            workdir = Path(tmp)
            first: dict[str, list[float]] = {"process": [], "docker": []}
            rates: dict[str, list[float]] = {"process": [], "docker": []}
            floors: list[float] = []
            for trial in range(trials):
                for kind in ("process", "docker"):
                    ms = time_to_first_score(kind, kafka, workdir, client)
                    first[kind].append(ms)
                    say(f"trial {trial + 1}/{trials} {kind}: deploy to first score {ms:.0f} ms")
                for kind in ("process", "docker"):
                    rate, floor = drain_rate(kind, kafka, workdir, client, n)
                    rates[kind].append(rate)
                    floors.append(floor)
                    say(f"trial {trial + 1}/{trials} {kind}: {rate:,.0f} scores/s (bare consume {floor:,.0f}/s)")
    finally:
        broker.stop()
    median = statistics.median
    out["deploy_to_first_score_ms"] = {k: {"median": round(median(v)), "all": [round(x) for x in v]} for k, v in first.items()}
    out["scores_per_s"] = {k: {"median": round(median(v)), "all": [round(x) for x in v]} for k, v in rates.items()}
    out["bare_consume_per_s"] = round(median(floors))
    out["overhead_ratio_process_over_docker"] = round(median(rates["process"]) / median(rates["docker"]), 3)
    out["process_share_of_bare_consume"] = round(median(rates["process"]) / median(floors), 3)
    out["target"] = "overhead ratio <= 1.1"
    out["met"] = out["overhead_ratio_process_over_docker"] <= 1.1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    say(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
