"""Faults under steady traffic: a worker killed, both killed, the broker killed and restarted.

    python -m benchmarks.faults [--rate 50] [--seconds 40] [--scenarios worker_kill,...]
                                [--out benchmarks/results/faults.json]

Starts the demo's topology on an embedded Kafka (the three example models, the decoy)
with two rendezvous workers, sends the Phishing rows at ``--rate``, and in turn:

- ``worker_kill``: SIGKILLs one worker a third of the way in (its supervisor restarts it);
- ``both_workers_kill``: SIGKILLs both;
- ``broker_restart``: SIGKILLs the broker and starts it again on the same data 3 s later.

Each scenario reports, from the results (the worker's own record of each request):
lost and duplicated requests, the share answered within the SLA and within SLA + 5 ms,
the worst decision latency, and how long after the fault (or the broker's return) the
first request sent after it was answered. The issue's goals: worker kill >= 99% within
SLA + 5 ms; both killed: answering again within 10 s; broker restart: within 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import say
from policies import EXAMPLE_STACK
from rendezvous.operations.stack import RunningStack, StackOptions, running_stack
from rendezvous.operations.stackfile import load_stack
from rendezvous.tools.client import RequestSender, ResultCollector
from rendezvous.tools.data import phishing_rows
from rendezvous.tools.summary import percentiles


def run_scenario(stack: RunningStack, name: str, fault: Callable[[], float], rate: float, seconds: float,
                 sla_ms: float) -> dict[str, Any]:
    """Send for ``seconds``; at a third of it, ``fault()`` (which returns the epoch ms the fault ended)."""
    rows = phishing_rows()
    collector = ResultCollector(stack.kafka, stack.topics, 4).start()
    sender = RequestSender(stack.kafka, stack.topics)
    # Warm up the client first (its first records wait for the topics' metadata): one second of traffic,
    # answered, before the measured traffic starts. The stack itself is warm already.
    warm = [f"{name}-warm-{i}" for i in range(int(rate))]
    sender.send(((rid, rows[i % len(rows)][0]) for i, rid in enumerate(warm)), rate)
    collector.wait_for(warm, 30)
    ids = [f"{name}-{i}" for i in range(int(rate * seconds))]
    stop = threading.Event()
    sending = threading.Thread(target=sender.send, daemon=True, kwargs={"stop": stop},
                               args=(((rid, rows[i % len(rows)][0]) for i, rid in enumerate(ids)), rate))
    sending.start()
    time.sleep(seconds / 3)
    say(f"{name}: fault")
    fault_ms = time.time() * 1000
    back_ms = fault()
    sending.join(seconds * 3)
    stop.set()
    collector.wait_for(ids, 90)
    collector.stop()
    got = {rid: collector.results.get(rid, []) for rid in ids}
    answered = {rid: r[0].result for rid, r in got.items() if r}
    latency = [r.latency_ms for r in answered.values()]
    after = sorted((r for r in answered.values() if r.request_ms >= back_ms), key=lambda r: r.request_ms)
    report = {
        "requests": len(ids), "lost": sum(1 for r in got.values() if not r),
        "duplicated": sum(1 for r in got.values() if len(r) > 1),
        "within_sla_share": round(sum(v <= sla_ms for v in latency) / len(ids), 5),
        "within_sla_plus_5ms_share": round(sum(v <= sla_ms + 5 for v in latency) / len(ids), 5),
        "decision_latency_ms": percentiles(latency), "max_latency_ms": round(max(latency, default=0.0), 1),
        "fault_lasted_ms": round(back_ms - fault_ms, 1),
        "first_answer_after_fault_ms": round(after[0].decided_ms - back_ms, 1) if after else None,
        "late_after_15s": sum(1 for r in after if r.request_ms >= back_ms + 15_000 and r.latency_ms > sla_ms),
        # what the worker's own record says of the late and duplicated ones, for the diagnosis
        "late_by_second_after_fault": dict(sorted(Counter(
            int((r.request_ms - fault_ms) // 1000) for r in answered.values() if r.latency_ms > sla_ms + 5).items())),
        "late_examples": [{"at_ms": round(r.request_ms - fault_ms), "latency_ms": round(r.latency_ms, 1),
                           "worker": r.worker, "detail": r.detail[:120]}
                          for r in sorted(answered.values(), key=lambda r: r.request_ms)
                          if r.latency_ms > sla_ms + 5 and r.request_ms >= fault_ms - 1000][:12],
        "duplicate_examples": [[{"at_ms": round(x.result.request_ms - fault_ms), "worker": x.result.worker,
                                 "latency_ms": round(x.result.latency_ms, 1), "detail": x.result.detail[:80]}
                                for x in r] for r in got.values() if len(r) > 1][:5],
    }
    say(f"{name}: {json.dumps(report)}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=40.0, help="traffic per scenario")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/faults.json"))
    parser.add_argument("--scenarios", default="worker_kill,both_workers_kill,broker_restart",
                        help="which scenarios, comma-separated, in this order")
    args = parser.parse_args()
    declared = load_stack(EXAMPLE_STACK)
    sla_ms = declared.policy.sla_ms
    report: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "sla_ms": sla_ms, "workers": 2}
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        options = StackOptions(None, "faults", 4, Path(tmp) / "logs", Path(tmp) / "archive", find_running_broker=False,
                               engine="kafka", broker_data=Path(tmp) / "kafka", secret_file=Path(tmp) / "secret")
        with running_stack(options, declared, lambda kind, data: say(data.get("text", ""))) as stack:
            assert stack.broker is not None
            workers = [c.spec.name for c in stack.runtime.supervisor.children() if c.spec.labels.get("role") == "rendezvous"]
            workers += stack.runtime.start_rendezvous(declared.policy_path, 1, first_index=len(workers))
            assert not stack.runtime.wait_ready(workers, 60)
            report["broker"] = stack.broker.describe()

            def kill(names: list[str]) -> Callable[[], float]:
                def fault() -> float:
                    for n in names:
                        os.kill(stack.runtime.supervisor.get(n).pid, signal.SIGKILL)
                    return time.time() * 1000
                return fault

            def restart_broker() -> float:
                assert stack.broker is not None and stack.broker.pid is not None
                os.kill(stack.broker.pid, signal.SIGKILL)
                stack.broker.stop()
                time.sleep(3)
                stack.broker.start()
                return time.time() * 1000

            scenarios = {"worker_kill": kill(workers[:1]), "both_workers_kill": kill(workers),
                         "broker_restart": restart_broker}
            for name in args.scenarios.split(","):
                fault = scenarios[name]
                assert not stack.runtime.wait_ready(workers, 90), "the workers did not come back"
                report[name] = run_scenario(stack, name, fault, args.rate, args.seconds, sla_ms)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"written to {args.out}")


if __name__ == "__main__":
    main()
