"""``rendezvous demo``: the whole architecture on this machine, driven by a data set.

An embedded broker, the policy's models as local processes, the decoy and a
rendezvous worker; then the Phishing rows are sent as requests at a steady rate
and every result is collected and checked: answered, within SLA, lost,
duplicated, which model answered and why, and end-to-end latency.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from decoy.archive import ArchiveReader
from policies import EXAMPLE_STACK
from policies.schema import Policy
from rendezvous.kernel.client_config import ClientConfig
from rendezvous.kernel.clock import now_ms
from rendezvous.kernel.kafka import poll_batch
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import DEFAULT_PARTITIONS, Topics
from rendezvous.kernel.wire import decode_score_batch
from rendezvous.operations.stack import (
    Progress,
    StackError,
    StackOptions,
    running_stack,
)
from rendezvous.operations.stackfile import load_stack
from rendezvous.tools.client import RequestSender, ResultCollector
from rendezvous.tools.data import phishing_rows
from rendezvous.tools.report import Marker, ReportError, write_report
from rendezvous.tools.summary import summarize
from rendezvous.tools.timeline import Scraper

__all__ = ["DemoOptions", "run_demo", "OutcomeFeeder"]


@dataclass
class DemoOptions:
    requests: int = 2000
    rate: float = 100.0
    stack_path: Path = EXAMPLE_STACK  # what to run, and the policy it names
    broker: str | None = None
    topic_prefix: str = "rendezvous"
    partitions: int = DEFAULT_PARTITIONS
    workdir: Path | None = None
    startup_timeout_s: float = 90.0
    #: After this share of the requests, the input shifts: only phishing pages are sent (a
    #: campaign starts), so the models' score distributions move. 0 or 1: no shift.
    shift_at: float = 0.5
    client: ClientConfig = field(default_factory=ClientConfig)  # Kafka security, with --broker
    engine: str | None = None  # the embedded broker's (None: auto); its data lives in a temporary directory
    report_dir: Path | None = None  # write the run in pictures here (see rendezvous.tools.report)
    #: Each request's label goes back as its outcome this long after its answer (the truth arrives later).
    outcome_delay_s: float = 2.0


def _warm_up(kafka: KafkaSettings, topics: Topics, sender: RequestSender, collector: ResultCollector,
             models: set[str], timeout: float) -> None:
    """Send requests until every model has scored one and the rendezvous has answered one.

    Also warms ``sender``: a new idempotent producer holds its first records until it
    has a producer id, and they would look late by that much.
    """
    scores = Consumer(kafka.consumer(topics.reader_group("demo-warm-up"), **{"enable.auto.commit": False}))
    scores.subscribe([topics.scores])
    features = phishing_rows()[0][0]
    scored: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        for i in itertools.count():
            rid = f"warmup-{i}"
            sender.send([(rid, features)], rate=0)
            until = time.monotonic() + 1.0
            while time.monotonic() < until and not models.issubset(scored):
                for message in poll_batch(scores, 100, 0.05):
                    if not message.error():
                        scored.add(decode_score_batch(message.value()).model)
            if models.issubset(scored) and collector.wait_for([rid], 2.0):
                return
            if time.monotonic() > deadline:
                raise StackError(f"no complete answer within {timeout:.0f}s: models that scored: {sorted(scored)} "
                                f"of {sorted(models)}")
    finally:
        scores.close()


def run_demo(options: DemoOptions, progress: Progress) -> dict[str, Any]:
    declared = load_stack(options.stack_path)
    policy = declared.policy
    rows = phishing_rows()
    workdir_ctx = (contextlib.nullcontext(options.workdir) if options.workdir
                   else tempfile.TemporaryDirectory(prefix="rendezvous-demo-"))
    with workdir_ctx as wd:
        workdir = Path(wd)
        workdir.mkdir(parents=True, exist_ok=True)
        stack_options = StackOptions(
            options.broker, options.topic_prefix, options.partitions,
            log_dir=workdir / "logs", archive_dir=workdir / "archive",
            startup_timeout_s=options.startup_timeout_s, find_running_broker=False, client=options.client,
            gateway_port=0,  # the HTTP gateway too, on a free port: the summary shows one call through it
            engine=options.engine,
            secret_file=workdir / "secret",  # signed policies and scores, as `up` runs them
        )
        with running_stack(stack_options, declared, progress) as stack:
            kafka, topics = stack.kafka, stack.topics
            collector = ResultCollector(kafka, topics, options.partitions).start()
            try:
                chain = {e.model for e in policy.routing.chain}
                progress("status", {"text": "warming up: until every model has scored and the rendezvous answered"})
                sender = RequestSender(kafka, topics)
                _warm_up(kafka, topics, sender, collector, chain, options.startup_timeout_s)
                sender.sent_ms.clear()
                order = _request_rows(rows, options.requests, options.shift_at)
                labels = {f"demo-{i}": rows[j][1] for i, j in enumerate(order)}
                shift_index = int(options.requests * options.shift_at) if 0 < options.shift_at < 1 else None
                worker_url = _worker_url(stack)
                drift: dict[str, Any] = {"shift_at_request": shift_index}
                scraper = Scraper(f"{worker_url}/metrics").start() if options.report_dir else None

                def _with_shift_marker(items):  # noqa: ANN001, ANN202 - records where the shift began
                    for i, item in enumerate(items):
                        if i == shift_index:
                            drift["champion_scores_before_shift"] = _canary(worker_url).get("scores")
                            drift["shift_s"] = time.time()
                            progress("status", {"text": f"request {i}: the input shifts (only phishing pages from now on)"})
                        yield item

                requests = _with_shift_marker((f"demo-{i}", rows[j][0]) for i, j in enumerate(order))
                stop_progress = threading.Event()
                outcomes = OutcomeFeeder(RequestSender(kafka, topics), collector, labels, options.outcome_delay_s)

                def report() -> None:
                    while not stop_progress.wait(0.25):
                        progress("tick", {"sent": len(sender.sent_ms), "answered": collector.count()})
                        outcomes.send_due()

                reporter = threading.Thread(target=report, daemon=True)
                reporter.start()
                progress("start", {"total": options.requests, "rate": options.rate})
                sender.send(requests, options.rate)
                collector.wait_for(labels, timeout=policy.sla_ms / 1000.0 + 10.0)
                time.sleep(0.5)  # a duplicate would come soon after the first answer
                stop_progress.set()
                reporter.join()
                progress("tick", {"sent": len(sender.sent_ms), "answered": collector.count()})
                received = {rid: [(r.result, r.at_ms) for r in got] for rid, got in collector.results.items()
                            if rid in sender.sent_ms}
                summary = summarize(sender.sent_ms, received, policy.sla_ms, labels)
                summary["policy"] = f"{policy.name} v{policy.version}"
                if declared.deploy.decoy.enabled:
                    summary["decoy_archived"] = _archived(workdir / "archive", expected=options.requests)
                summary["drift"] = _drift_summary(drift, _canary(worker_url), policy)
                summary["learned"] = _learn_from_labels(stack, outcomes, len(collector.results))
                if scraper is not None and options.report_dir is not None:
                    try:  # the run itself went well: a report that cannot be drawn is said, not a failure
                        summary["report"] = str(_report(options.report_dir, scraper, summary, drift.get("shift_s"),
                                                        policy.sla_ms).resolve())
                    except ReportError as exc:
                        summary["report_error"] = str(exc)
                summary["gateway"] = _through_the_gateway(stack.gateway_url, policy.name, rows[0][0])
                # the worker's own count of answers the broker acknowledged after the SLA, by cause
                summary["written_after_sla"] = {k: v for k, v in _stats(worker_url).get("sla_misses", {}).items() if v}
                summary["broker"] = stack.broker.describe() if stack.broker else stack.kafka.bootstrap
                summary["stack"] = str(declared.source)
                summary["workdir"] = str(workdir) if options.workdir else None
            finally:
                collector.stop()
    return summary


def _report(directory: Path, scraper: Scraper, summary: dict[str, Any], shift_s: float | None,
            sla_ms: float) -> Path:
    """The run in pictures, from the worker's metrics scraped every second (the outcomes included)."""
    lat = summary["latency_ms"]
    facts = {"policy": summary["policy"], "answered": f"{summary['answered']} of {summary['sent']} "
             f"(lost {summary['lost']}, duplicated {summary['duplicated']})",
             "within the SLA": f"{summary['within_sla']} of {summary['answered']} (SLA {sla_ms:g} ms)",
             "latency, end to end": f"p50 {lat['p50']} ms, p99 {lat['p99']} ms",
             "answered by": ", ".join(f"{m} {n}" for m, n in summary["by_model"].items())}
    markers = [Marker(shift_s, "input shifts")] if shift_s is not None else []
    return write_report(directory, scraper.stop(), f"rendezvous demo: {summary['policy']}", sla_ms / 1000, markers,
                        facts)


def _through_the_gateway(url: str | None, policy: str, features: dict[str, Any]) -> dict[str, Any] | None:
    """One Open Inference Protocol call through the gateway, as an HTTP client would make it."""
    if url is None:
        return None
    body = {"id": "demo-http-1", "inputs": [{"name": k, "datatype": "FP64", "shape": [1], "data": [v]}
                                            for k, v in features.items()]}
    request = urllib.request.Request(f"{url}/v2/models/{policy}/infer", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError) as exc:
        return {"url": url, "error": str(exc)}
    p = answer["parameters"]
    return {"url": f"{url}/v2/models/{policy}/infer", "model": p["model"], "reason": p["reason"],
            "latency_ms": p["latency_ms"], "score": answer["outputs"][0]["data"][0]}


class OutcomeFeeder:
    """Sends each answered request's label back as its outcome, ``delay_s`` after its answer arrived."""

    def __init__(self, sender: RequestSender, collector: ResultCollector, labels: dict[str, bool],
                 delay_s: float) -> None:
        self.sender, self.collector, self.labels, self.delay_s = sender, collector, labels, delay_s
        self.sent: set[str] = set()

    def send_due(self, everything: bool = False) -> None:
        due = now_ms() - 1000.0 * self.delay_s
        for rid, got in self.collector.snapshot().items():
            if rid in self.labels and rid not in self.sent and got and (everything or got[0].at_ms <= due):
                self.sender.send_outcome(rid, self.labels[rid], got[0].partition)
                self.sent.add(rid)
        if everything:
            self.sender.flush()


def _learn_from_labels(stack, outcomes: OutcomeFeeder, answered: int,  # noqa: ANN001
                       timeout: float = 10.0) -> dict[str, Any]:
    """Send the outcomes not sent yet, and report what the rendezvous learned from them all: each
    model's posterior share of right decisions, and its ROC AUC."""
    outcomes.send_due(everything=True)
    deadline, stats = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        stats = _stats(_worker_url(stack))
        if stats.get("outcomes", {}).get("credited", 0) >= answered - 5:  # minus warm-ups
            break
        time.sleep(0.3)
    return {"outcomes": stats.get("outcomes", {}), "posterior_means": stats.get("posterior_means", {}),
            "roc_auc": {m: q["roc_auc"] for m, q in _per_model(stats).items() if q["roc_auc"] is not None},
            "quality": {m: {k: v for k, v in q.items() if k != "outcomes" and v is not None}
                        for m, q in _per_model(stats).items()}}


def _per_model(stats: dict[str, Any]) -> dict[str, Any]:
    """The worker's quality report per model (any version), without its per ``model@version`` entries."""
    return {m: q for m, q in stats.get("quality", {}).items() if "@" not in m}


def _request_rows(rows: list, n: int, shift_at: float) -> list[int]:
    """Row indices to send: the data set cycled, then only phishing rows after the shift."""
    phishing = [i for i, (_, label) in enumerate(rows) if label]
    cut = int(n * shift_at) if 0 < shift_at < 1 else n
    return [i % len(rows) for i in range(cut)] + [phishing[i % len(phishing)] for i in range(n - cut)]


def _worker_url(stack) -> str:  # noqa: ANN001
    worker = next(c for c in stack.runtime.supervisor.children() if c.spec.labels.get("role") == "rendezvous")
    return f"http://127.0.0.1:{worker.http_port}"


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as response:
        return json.loads(response.read())


def _canary(url: str) -> dict[str, Any]:
    return _stats(url).get("canary") or {}


def _drift_summary(drift: dict[str, Any], report: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """What the canary saw: whether drift was raised and how many requests after the shift."""
    if policy.canary is None:
        return {"canary": None}
    before, at = drift.get("champion_scores_before_shift"), report.get("first_alarm_at")
    return {
        "canary": policy.canary.model, "champion": report.get("champion") or (policy.champion or policy.routing.chain[0].model),
        "shift_at_request": drift.get("shift_at_request"), "reference_complete": report.get("phase") == "monitoring",
        "detected": at is not None, "drifting_now": report.get("drifting", False),
        "alarm_before_shift": at is not None and before is not None and at <= before,
        "requests_after_shift": at - before if at is not None and before is not None and at > before else None,
        "ks_reference": report.get("ks_reference"), "ks_canary": report.get("ks_canary"),
        "psi_reference": report.get("psi_reference"), "paired_mean_diff": report.get("paired_mean_diff"),
    }


def _archived(directory: Path, expected: int, timeout: float = 5.0) -> int:
    """Records the decoy archived (warm-up requests excluded), once it has caught up."""
    deadline = time.monotonic() + timeout
    while True:
        count = sum(1 for _, r in ArchiveReader(directory).read() if (r.key or b"").startswith(b"demo-"))
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.2)
