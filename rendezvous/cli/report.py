"""``rendezvous report``: a live stack's last hour (or any range) in pictures, from its Prometheus."""

from __future__ import annotations

import time
from pathlib import Path

import click

from rendezvous.kernel.options import stderr_console
from rendezvous.tools.report import write_report
from rendezvous.tools.timeline import PrometheusRange

__all__ = ["UNITS", "Duration", "report"]

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):
    """``90s``, ``30m``, ``6h``, ``2d``: a span of time, in seconds."""

    name = "DURATION"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip()
        try:
            seconds = float(text[:-1]) * UNITS[text[-1]] if text[-1:] in UNITS else float(text)
        except ValueError:
            self.fail(f"{value!r} is not a duration such as 90s, 30m, 6h or 2d", param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} is not a positive duration", param, ctx)
        return seconds


@click.command()
@click.option("--prometheus", metavar="URL", default="http://127.0.0.1:9090", show_default=True,
              help="The Prometheus that scrapes the stack (compose/prometheus/prometheus.yml configures one).")
@click.option("--since", type=Duration(), default="1h", show_default=True,
              help="How far back the report goes, from now (90s, 30m, 6h, 2d).")
@click.option("--out", "directory", envvar="RENDEZVOUS_REPORT", type=click.Path(file_okay=False, path_type=Path),
              default=Path("rendezvous-report"),
              show_default=True, help="Write DIR/index.html and one PNG per chart here.")
@click.option("--sla-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The SLA line on the latency chart. Default: the policy's, from rendezvous_policy_sla_seconds.")
def report(prometheus: str, since: float, directory: Path, sla_ms: float | None) -> None:
    """Draw a live stack's metrics as one HTML page of charts: latency with the SLA, answers by model
    and reason, traffic shares and posteriors, canary drift with its detection, quality from outcomes."""
    end = time.time()
    timeline = PrometheusRange(prometheus, end - since, end)
    if sla_ms is None:
        slas = [v for points in timeline.gauge("rendezvous_policy_sla_seconds", []).values() for _, v in points]
        sla_s = slas[-1] if slas else None
    else:
        sla_s = sla_ms / 1000
    facts = {"Prometheus": prometheus, "from": _when(end - since), "to": _when(end),
             "SLA": f"{sla_s * 1000:g} ms" if sla_s is not None else "unknown (no rendezvous_policy_sla_seconds)"}
    page = write_report(directory, timeline, f"rendezvous: the last {_span(since)} from {prometheus}", sla_s,
                        facts=facts)
    stderr_console().log(f"report written: {page}")
    click.echo(page)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
