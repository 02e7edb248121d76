"""``rendezvous demo``: everything embedded, driven by the Phishing data set."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from policies import EXAMPLE_STACK
from rendezvous.kernel.options import (
    broker_option,
    client_config,
    engine_option,
    stderr_console,
    topic_prefix_option,
)
from rendezvous.tools.demo import DemoOptions, run_demo

__all__ = ["demo", "LATE_EXIT_CODE"]


@click.command()
@click.option("--requests", "n_requests", type=click.IntRange(1), default=2000, show_default=True,
              help="How many requests to send (the 1,250 Phishing rows, cycled).")
@click.option("--rate", type=click.FloatRange(0), default=100.0, show_default=True,
              help="Requests per second (0: as fast as possible).")
@click.option("--stack", "stack_path", envvar="RENDEZVOUS_STACK", show_envvar=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), default=EXAMPLE_STACK,
              show_default="policies/example.stack.yaml",
              help="Stack file: what to run (models, decoy, workers) and the policy it names.")
@broker_option()
@topic_prefix_option
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep logs and the decoy's archive here (default: a temporary directory, removed after).")
@click.option("--shift-at", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of the requests after which the input shifts (only phishing pages), for the canary "
                   "to notice; 0 or 1: no shift.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on the last line.")
@engine_option
@click.option("--report", "report_dir", envvar="RENDEZVOUS_REPORT", show_envvar=True,
              type=click.Path(file_okay=False, path_type=Path), default=Path("rendezvous-report"), show_default=True,
              help="Write the run in pictures to DIR/index.html (latency with the SLA, answers by model and reason, "
                   "shares and posteriors, canary drift, quality from outcomes).")
@click.option("--no-report", is_flag=True, help="Write no report.")
@click.option("--outcome-delay-s", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Each request's label goes back as its outcome this long after its answer (the truth comes later).")
@click.option("--max-late-share", envvar="RENDEZVOUS_MAX_LATE_SHARE", show_envvar=True, type=click.FloatRange(0, 1),
              default=0.005, show_default=True,
              help="Exit with code 4 when more than this share of the answers were decided after the SLA "
                   "(the promise broken); the summary says why they were late.")
def demo(n_requests: int, rate: float, stack_path: Path, broker: str | None, topic_prefix: str,
         workdir: Path | None, shift_at: float, as_json: bool, engine: str, report_dir: Path, no_report: bool,
         outcome_delay_s: float, max_late_share: float) -> None:
    """Run broker, three models, decoy and rendezvous on this machine; send requests; summarize.

    Without --broker everything is embedded; nothing needs installing.
    """
    console = stderr_console()
    bars = Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)
    tasks: dict[str, Any] = {}

    def progress(kind: str, data: dict[str, Any]) -> None:
        if kind == "status":
            console.log(data["text"])
        elif kind == "start":
            bars.start()
            tasks["sent"] = bars.add_task("sent", total=data["total"])
            tasks["answered"] = bars.add_task("answered", total=data["total"])
        elif kind == "tick" and tasks:
            bars.update(tasks["sent"], completed=data["sent"])
            bars.update(tasks["answered"], completed=min(data["answered"], data["sent"]))

    options = DemoOptions(requests=n_requests, rate=rate, stack_path=stack_path, broker=broker,
                          topic_prefix=topic_prefix, workdir=workdir, shift_at=shift_at,
                          client=client_config(), engine=engine, report_dir=None if no_report else report_dir,
                          outcome_delay_s=outcome_delay_s)
    try:
        summary = run_demo(options, progress)
    finally:
        bars.stop()
    if as_json:  # stdout holds only the JSON, for jq; the table goes with the progress
        console.print(_table(summary))
        click.echo(json.dumps(summary))
    else:  # the result on stdout, the progress on stderr
        Console(width=None if sys.stdout.isatty() else 200).print(_table(summary))
    late = sum(summary["late"].values())
    if late > max_late_share * max(summary["answered"], 1):
        console.print(f"[red]the SLA promise was broken:[/] {late} of {summary['answered']} answers were decided after "
                      f"the SLA (more than {max_late_share:.2%}); {_late_line(summary)}")
        sys.exit(LATE_EXIT_CODE)


def _table(s: dict[str, Any]) -> Table:
    table = Table(title=f"rendezvous demo — policy {s['policy']}, SLA {s['sla_ms']:g} ms", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("sent", str(s["sent"]))
    table.add_row("answered", f"{s['answered']}  (lost {s['lost']}, duplicated {s['duplicated']})")
    table.add_row("within SLA", f"{s['within_sla']} of {s['answered']}")
    if s.get("late") or s.get("written_after_sla"):
        table.add_row("late answers", _late_line(s))
    table.add_row("answered by", ", ".join(f"{m} {n}" for m, n in s["by_model"].items()))
    table.add_row("reasons", ", ".join(f"{r} {n}" for r, n in s["by_reason"].items()))
    lat = s["latency_ms"]
    table.add_row("latency (end to end)", f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
    if "accuracy" in s:
        table.add_row("accuracy of answers", f"{s['accuracy']:.1%}")
    learned = s.get("learned", {}).get("posterior_means")
    if learned:
        table.add_row("learned from outcomes", ", ".join(f"{m} {v:.1%} right" for m, v in
                                                         sorted(learned.items(), key=lambda kv: -kv[1])))
    quality = s.get("learned", {}).get("quality")
    if quality:
        table.add_row("quality on the outcomes", "; ".join(
            f"{m}: " + ", ".join(f"{_MEASURES.get(k, k)} {v:.3f}" for k, v in q.items())
            for m, q in sorted(quality.items(), key=lambda kv: -kv[1].get("roc_auc", 0))))
    drift = s.get("drift") or {}
    if drift.get("canary"):
        table.add_row("canary drift", _drift_line(drift))
    if "decoy_archived" in s:
        table.add_row("decoy archived", f"{s['decoy_archived']} requests")
    if s.get("report"):
        table.add_row("report", f"{s['report']} (open it in a browser)")
    elif s.get("report_error"):
        table.add_row("report", f"not written: {s['report_error']}")
    g = s.get("gateway")
    if g and "error" not in g:
        table.add_row("HTTP gateway (OIP v2)", f"POST {g['url']}: {g['model']} ({g['reason']}) in {g['latency_ms']:.1f} ms")
    elif g:
        table.add_row("HTTP gateway (OIP v2)", f"failed: {g['error']}")
    return table


LATE_EXIT_CODE = 4
_MEASURES = {"roc_auc": "AUC", "log_loss": "log loss"}
_CAUSES = {"intake": "reached the worker after they were due (a backlog before it: broker, consumer lag, "
                     "a client faster than the system)",
           "worker_busy": "decided late by a busy worker (starved of CPU)"}


def _late_line(s: dict[str, Any]) -> str:
    parts = [f"{n} {_CAUSES.get(cause, cause)}" for cause, n in s.get("late", {}).items()]
    written = s.get("written_after_sla")
    if written:
        parts.append("written after the SLA by the worker's count: " + ", ".join(f"{c} {n}" for c, n in written.items()))
    return "; ".join(parts) or "none"


def _drift_line(d: dict[str, Any]) -> str:
    who = f"champion {d['champion']} vs canary {d['canary']}"
    if not d["reference_complete"]:
        return f"{who}: reference window not complete yet (send more requests)"
    if d["alarm_before_shift"]:
        return f"{who}: drift raised BEFORE the shift (a false alarm)"
    if d["requests_after_shift"] is not None:
        ks = d.get("ks_reference")
        return (f"{who}: drift detected {d['requests_after_shift']} requests after the shift at request "
                f"{d['shift_at_request']}" + (f" (KS vs reference {ks:.2f})" if ks is not None else "")
                + "; alert RendezvousChampionDrift fires on rendezvous_drift_detected")
    if d["shift_at_request"] is None:
        return f"{who}: no shift sent, no drift raised"
    return f"{who}: the shift at request {d['shift_at_request']} was not detected"
