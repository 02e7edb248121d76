"""Soak: the demo topology at a steady rate for a long time; does it stay flat?

    python -m benchmarks.soak [--engine kafka] [--rate 100] [--minutes 60] [--out benchmarks/results/soak.json]

Starts the demo's topology on an embedded broker (the three example models, the
decoy, one rendezvous worker), sends the Phishing rows at ``--rate`` for
``--minutes``, and compares the first 2,000 answers with the last 2,000: the
p99 of the worker's decision latency (decided - request time, its own clock)
and the end-to-end latency the client saw, and the share within the SLA. Every
30 s it samples the broker's resident memory and CPU, and prints a progress line.

Flat means: the last 2,000's p99 within 20% of the first 2,000's, and the
broker's memory at the end within 20% of its level after the first minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import say
from policies import EXAMPLE_STACK
from rendezvous.operations.stack import StackOptions, running_stack
from rendezvous.operations.stackfile import load_stack
from rendezvous.tools.client import RequestSender, ResultCollector
from rendezvous.tools.data import phishing_rows
from rendezvous.tools.summary import percentiles

WINDOW = 2000
SAMPLE_S = 30.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def window(ids: list[str], collector: ResultCollector, sent_ms: dict[str, float], sla_ms: float) -> dict[str, Any]:
    got = [(rid, collector.results[rid][0]) for rid in ids if rid in collector.results]
    decided = [r.result.latency_ms for _, r in got]
    e2e = [r.at_ms - sent_ms[rid] for rid, r in got if rid in sent_ms]
    return {"requests": len(ids), "answered": len(got),
            "within_sla_share": round(sum(d <= sla_ms for d in decided) / max(len(ids), 1), 5),
            "decision_latency_ms": percentiles(decided), "end_to_end_ms": percentiles(e2e)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="kafka", help="embedded broker engine: kafka or tansu")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to send")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    args = parser.parse_args()
    declared = load_stack(EXAMPLE_STACK)
    sla_ms = declared.policy.sla_ms
    rows = phishing_rows()
    total = int(args.rate * args.minutes * 60)
    report: dict[str, Any] = {"engine": args.engine, "rate": args.rate, "minutes": args.minutes, "sla_ms": sla_ms}
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        options = StackOptions(None, "soak", 4, Path(tmp) / "logs", Path(tmp) / "archive", find_running_broker=False,
                               engine=args.engine)
        with running_stack(options, declared, lambda kind, data: say(data.get("text", ""))) as stack:
            assert stack.broker is not None and stack.broker.pid is not None
            broker_pid = stack.broker.pid
            report["broker"] = stack.broker.describe()
            collector = ResultCollector(stack.kafka, stack.topics, 4).start()
            sender = RequestSender(stack.kafka, stack.topics)
            warm = [(f"warm-{i}", rows[i][0]) for i in range(50)]
            sender.send(warm, 25)
            collector.wait_for([rid for rid, _ in warm], 60)
            ids = [f"soak-{i}" for i in range(total)]
            stop = threading.Event()
            sending = threading.Thread(target=sender.send, name="soak-sender", daemon=True,
                                       args=(((rid, rows[i % len(rows)][0]) for i, rid in enumerate(ids)), args.rate),
                                       kwargs={"stop": stop})
            samples: list[dict[str, float]] = []
            started = time.monotonic()
            cpu0 = cpu_s(broker_pid)
            sending.start()
            try:
                while sending.is_alive():
                    sending.join(SAMPLE_S)
                    elapsed = time.monotonic() - started
                    answered = collector.count()
                    samples.append({"t_s": round(elapsed, 1), "broker_rss_mb": rss_mb(broker_pid),
                                    "broker_cpu_share": round((cpu_s(broker_pid) - cpu0) / elapsed, 3),
                                    "answered": answered})
                    say(f"{elapsed / 60:5.1f} min: {answered} answered of {len(sender.sent_ms) - len(warm)} sent; "
                        f"broker {samples[-1]['broker_rss_mb']} MB, {samples[-1]['broker_cpu_share']:.0%} of a core")
            finally:
                stop.set()
                sending.join(60)
            collector.wait_for(ids, 60)
            collector.stop()
            first, last = window(ids[:WINDOW], collector, sender.sent_ms, sla_ms), \
                window(ids[-WINDOW:], collector, sender.sent_ms, sla_ms)
            everything = window(ids, collector, sender.sent_ms, sla_ms)
    settled = next((s for s in samples if s["t_s"] >= 120), samples[0] if samples else None)
    report.update({
        "first_2000": first, "last_2000": last, "all": everything, "broker_samples": samples,
        "p99_last_over_first": round(last["decision_latency_ms"]["p99"] / max(first["decision_latency_ms"]["p99"], 1e-9), 3),
        "e2e_p99_last_over_first": round(last["end_to_end_ms"]["p99"] / max(first["end_to_end_ms"]["p99"], 1e-9), 3),
        "broker_rss_end_over_settled": round(samples[-1]["broker_rss_mb"] / settled["broker_rss_mb"], 3)
        if samples and settled else None,
    })
    report["flat"] = (report["p99_last_over_first"] <= 1.2 and (report["broker_rss_end_over_settled"] or 0) <= 1.2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"first 2,000: p99 {first['decision_latency_ms']['p99']} ms; last 2,000: p99 {last['decision_latency_ms']['p99']} "
        f"ms; within the SLA overall {everything['within_sla_share']:.3%}; broker memory x"
        f"{report['broker_rss_end_over_settled']}; flat: {report['flat']}")
    say(f"written to {args.out}")


if __name__ == "__main__":
    main()
