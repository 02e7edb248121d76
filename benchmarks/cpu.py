"""Where the CPU goes: CPU time per request of every process of the demo topology, from /proc.

    python -m benchmarks.cpu [--engines kafka,tansu] [--rates 100,200,400] [--seconds 20]
                             [--out benchmarks/results/cpu.json]

For each embedded broker engine in turn (both by default: their figures side by side),
runs the demo's topology (embedded broker, the three example models, the decoy,
one rendezvous worker, the HTTP gateway and this client) and, at each fixed
offered rate, reads every process's utime + stime from ``/proc/PID/stat``
before and after the window: CPU milliseconds per request per process, a
figure the machine's noise moves far less than wall-clock throughput. Also:

- idle: each process's share of a core with no traffic (after a warm-up: a JVM
  compiles its hot code in its first minute, which would count against the broker);
- floors in the same run: bare Faust's CPU per event (the rendezvous's own app
  class, an agent that does nothing, fed at the worker's event rate), and a
  bare confluent-kafka consumer's CPU per request (what a model runner costs
  before it scores anything);
- the gateway: CPU per HTTP call, and its latency against a Kafka client's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks import say
from policies import EXAMPLE, EXAMPLE_STACK, load_policy
from rendezvous.kernel.admin import create_topic
from rendezvous.kernel.kafka import poll_batch
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.operations.broker import free_port
from rendezvous.operations.stack import RunningStack, StackOptions, running_stack
from rendezvous.operations.stackfile import load_stack
from rendezvous.tools.client import RequestSender, ResultCollector
from rendezvous.tools.data import phishing_rows
from rendezvous.tools.summary import percentiles

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    """utime + stime of a process (all its threads), in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS


def processes(stack: RunningStack) -> dict[str, int]:
    out = {"broker": stack.broker.pid or 0 if stack.broker else 0, "client": os.getpid()}
    for child in stack.runtime.supervisor.children():
        if child.pid:
            out[child.spec.name] = child.pid
    return out


def snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_ms(pid) for name, pid in pids.items()}


def at_rate(stack: RunningStack, pids: dict[str, int], rate: float, seconds: float) -> dict[str, Any]:
    rows = phishing_rows()
    collector = ResultCollector(stack.kafka, stack.topics, 4).start()
    sender = RequestSender(stack.kafka, stack.topics)
    try:
        sender.send([(f"warm-{rate}-{i}", rows[i][0]) for i in range(20)], 50)  # producer id, fetch positions
        collector.wait_for([f"warm-{rate}-{i}" for i in range(20)], 30)
        n = int(rate * seconds)
        ids = [f"cpu-{rate}-{i}" for i in range(n)]
        before, started = snapshot(pids), time.monotonic()
        sender.send(((rid, rows[i % len(rows)][0]) for i, rid in enumerate(ids)), rate)
        answered = collector.wait_for(ids, 30)
        elapsed = time.monotonic() - started
        after = snapshot(pids)
        got = [collector.results[rid][0].result for rid in ids if rid in collector.results]
    finally:
        collector.stop()
    sla = load_policy(EXAMPLE).sla_ms
    within = sum(r.latency_ms <= sla for r in got)  # judged by the worker's own clock
    per_request = {name: round((after[name] - before[name]) / max(len(got), 1), 4) for name in pids}
    return {"rate": rate, "requests": n, "answered": len(got), "all_answered": answered,
            "within_sla": within, "within_sla_share": round(within / max(n, 1), 5), "elapsed_s": round(elapsed, 2),
            "cpu_ms_per_request": per_request,
            "cpu_ms_per_request_total": round(sum(per_request.values()), 3),
            "worker_latency_ms": percentiles([r.latency_ms for r in got])}


def idle(pids: dict[str, int], seconds: float) -> dict[str, float]:
    before = snapshot(pids)
    time.sleep(seconds)
    after = snapshot(pids)
    return {name: round((after[name] - before[name]) / (seconds * 1000), 4) for name in pids}  # share of a core


def bare_faust_cpu(kafka: KafkaSettings, events_per_s: float, n: int) -> dict[str, float]:
    """Bare Faust fed live at ``events_per_s``: its CPU per event over the same kind of window."""
    topic = f"bare-cpu-{os.getpid()}-{int(events_per_s)}"
    create_topic(kafka, topic, 4)
    worker = subprocess.Popen([sys.executable, "-m", "benchmarks.faust_bare", kafka.bootstrap, topic, str(n),
                               str(free_port()), str(kafka.fetch_wait_ms)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    producer = Producer(kafka.producer())
    time.sleep(8)  # its consumer joins; events before it joins would be drained in a burst, not at the rate
    interval, start = 1 / events_per_s, time.perf_counter()
    for i in range(n + 10):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        producer.produce(topic, b"x" * 300, b"%d" % i, partition=i % 4)
        producer.poll(0)
    producer.flush(10)
    out, _ = worker.communicate(timeout=120)
    line = out.strip().splitlines()[-1]
    return json.loads(line[line.index("{"):])


def bare_consumer_cpu(kafka: KafkaSettings, topic: str, n: int) -> float:
    """A consumer that only reads ``n`` requests, in this process: CPU ms per request (process_time)."""
    consumer = Consumer(kafka.consumer(f"bare-consumer-{os.getpid()}", **{"enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(4)])
    seen, started = 0, time.process_time()
    deadline = time.monotonic() + 60
    while seen < n and time.monotonic() < deadline:
        seen += sum(1 for m in poll_batch(consumer, 500, 0.1) if not m.error())
    used = time.process_time() - started
    consumer.close()
    return round(1000 * used / max(seen, 1), 4)


def gateway_calls(url: str, policy: str, n: int, rate: float) -> dict[str, Any]:
    rows = phishing_rows()
    latencies = []
    for i in range(n):
        body = json.dumps({"id": f"http-{i}", "features": rows[i % len(rows)][0]}).encode()
        request = urllib.request.Request(f"{url}/v2/models/{policy}/infer", data=body)
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        latencies.append((time.perf_counter() - t0) * 1000)
        time.sleep(max(0.0, 1 / rate - latencies[-1] / 1000))
    return {"calls": n, "http_latency_ms": percentiles(latencies)}


def arguments(doc: str, rates: str, seconds: float, out: str) -> argparse.Namespace:
    """The options every fixed-rate benchmark of the demo topology takes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="kafka,tansu", help="embedded broker engines to measure, in turn")
    parser.add_argument("--rates", default=rates, help="offered rates, requests per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=seconds, help="how long each rate is offered")
    parser.add_argument("--out", type=Path, default=Path(out), help="where the JSON figures go")
    return parser.parse_args()


def measure_engine(engine: str, rates: list[float], seconds: float) -> dict[str, Any]:
    """The whole measurement on one engine: idle, each rate, the floors, the gateway."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        policy = load_policy(EXAMPLE)
        options = StackOptions(None, "benchcpu", 4, Path(tmp) / "logs", Path(tmp) / "archive",
                               find_running_broker=False, gateway_port=0, engine=engine)
        declared = load_stack(EXAMPLE_STACK)
        say(f"{engine}: starting the demo topology (3 models, decoy, 1 worker, gateway)")
        with running_stack(options, declared, lambda kind, data: say(data.get("text", ""))) as stack:
            kafka = stack.kafka
            out["broker"] = stack.broker.describe() if stack.broker else None
            out["fetch_wait_ms"] = kafka.fetch_wait_ms
            pids = processes(stack)
            # A JVM compiles its hot code in its first minute: warm every process up before measuring.
            say("warming up: 200 req/s for 20 s (not measured)")
            at_rate(stack, pids, 200, 20)
            say("idle for 10 s")
            out["idle_share_of_a_core"] = idle(pids, 10)
            out["idle_total_share_of_a_core"] = round(sum(out["idle_share_of_a_core"].values()), 3)
            out["rates"] = []
            for rate in rates:
                say(f"{engine}: {rate:g} req/s for {seconds:g} s")
                out["rates"].append(at_rate(stack, pids, rate, seconds))
                entry = out["rates"][-1]
                say(f"  within the SLA {entry['within_sla']}/{entry['requests']}, "
                    f"p99 {entry['worker_latency_ms'].get('p99')} ms, {entry['cpu_ms_per_request_total']} CPU ms/request")
            say("a bare consumer reading the same requests")
            out["bare_consumer_cpu_ms_per_request"] = bare_consumer_cpu(kafka, stack.topics.requests, 2000)
            if stack.gateway_url:
                say("the gateway: 500 HTTP calls at 50/s")
                gateway_pid = pids.get("gateway")
                before = cpu_ms(gateway_pid) if gateway_pid else 0.0
                calls = gateway_calls(stack.gateway_url, policy.name, 500, 50)
                calls["gateway_cpu_ms_per_call"] = round((cpu_ms(gateway_pid) - before) / 500, 4) if gateway_pid else None
                out["gateway"] = calls
            for entry in out["rates"]:
                events_per_s = entry["rate"] * 4  # a request and (about) one score record from each of three models
                say(f"bare Faust fed at {events_per_s:g} events/s")
                bare = bare_faust_cpu(kafka, events_per_s, int(events_per_s * 10))
                worker = next(v for k, v in entry["cpu_ms_per_request"].items() if k.startswith("rendezvous/"))
                runners = [v for k, v in entry["cpu_ms_per_request"].items() if k.startswith("model/")]
                entry["bare_faust_cpu_ms_per_event"] = bare["cpu_ms_per_event"]
                entry["worker_vs_bare_faust_per_event"] = round(worker / 4 / bare["cpu_ms_per_event"], 2)
                entry["runner_vs_bare_consumer"] = round(min(runners) / out["bare_consumer_cpu_ms_per_request"], 2)
    return out


def main() -> None:
    args = arguments(__doc__ or "", "100,200,400", 20.0, "benchmarks/results/cpu.json")
    rates = [float(r) for r in args.rates.split(",")]
    out: dict[str, Any] = {"machine_cores": os.cpu_count(), "engines": {}}
    for engine in args.engines.split(","):
        out["engines"][engine] = measure_engine(engine, rates, args.seconds)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
