"""A run in pictures: one self-contained HTML page with a PNG chart per question.

:func:`write_report` draws, from a :class:`~rendezvous.tools.timeline.Timeline`:

- answer latency (p50, p99) over time, with the SLA line;
- answers per second by model and reason (preferred, fallback, default);
- traffic shares, and the posterior mean reward the bandit holds for each model;
- the canary's sequential drift statistic against its threshold, with the
  detection (and, in the demo, the input shift) marked;
- live model quality: each model's ROC AUC and accuracy on the outcomes that arrived.

The page embeds its charts (one file to mail or attach to a ticket) and the same
PNGs are written beside it. A chart with nothing to show says why instead of
being left out. ``rendezvous demo --report DIR`` and ``rendezvous report
--prometheus URL`` write it.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rendezvous.kernel.errors import OperationsError
from rendezvous.tools.timeline import Series, Timeline

__all__ = ["CHARTS", "Marker", "ReportError", "write_report"]


class ReportError(OperationsError):
    """The report cannot be drawn here (its plotting library is missing)."""


@dataclass(frozen=True)
class Marker:
    """A moment worth a vertical line on every chart (``at_s``: epoch seconds)."""

    at_s: float
    label: str
    color: str = "tab:purple"


@dataclass
class _Page:
    timeline: Timeline
    start_s: float
    sla_s: float | None
    markers: list[Marker] = field(default_factory=list)


def _lines(ax: Any, page: _Page, series: Series, scale: float = 1.0, name: Callable[[tuple[str, ...]], str] = "/".join,
           ) -> int:
    drawn = 0
    for key, points in sorted(series.items()):
        if points:
            ax.plot([t - page.start_s for t, _ in points], [v * scale for _, v in points], label=name(key) or "all",
                    marker="." if len(points) < 30 else None)
            drawn += 1
    return drawn


def _latency(ax: Any, page: _Page) -> str | None:
    name = "rendezvous_result_latency_seconds"
    drawn = _lines(ax, page, {("p50",): page.timeline.quantile(name, 0.5),
                              ("p99",): page.timeline.quantile(name, 0.99)}, scale=1000)
    if page.sla_s is not None:
        ax.axhline(page.sla_s * 1000, color="tab:red", linestyle="--", label=f"SLA {page.sla_s * 1000:g} ms")
    ax.set_ylabel("ms after the request's timestamp")
    return None if drawn else "no answers in this time range"


def _answers(ax: Any, page: _Page) -> str | None:
    drawn = _lines(ax, page, page.timeline.rate("rendezvous_results", ["model", "reason"]),
                   name=lambda k: f"{k[0] or 'no model'} ({k[1]})")
    ax.set_ylabel("answers per second")
    return None if drawn else "no answers in this time range"


def _shares(ax: Any, page: _Page) -> str | None:
    shares = page.timeline.gauge("rendezvous_traffic_share", ["model"])
    posterior = page.timeline.gauge("rendezvous_posterior_mean", ["model"])
    colors = {m: f"C{i}" for i, m in enumerate(sorted({k[0] for k in [*shares, *posterior]}))}  # one per model
    drawn = 0
    for key, points in sorted(shares.items()):
        drawn += bool(points)
        ax.plot([t - page.start_s for t, _ in points], [v for _, v in points], color=colors[key[0]],
                label=f"{key[0]}: share of answers")
    for key, points in sorted(posterior.items()):
        ax.plot([t - page.start_s for t, _ in points], [v for _, v in points], color=colors[key[0]], linestyle=":",
                label=f"{key[0]}: posterior mean reward")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share / mean reward")
    return None if drawn or posterior else "no answers in this time range"


def _drift(ax: Any, page: _Page) -> str | None:
    cusum = page.timeline.gauge("rendezvous_drift_cusum", ["against"])
    drawn = _lines(ax, page, cusum, name=lambda k: f"champion against {k[0]}")
    threshold = page.timeline.gauge("rendezvous_drift_threshold", [])
    for points in threshold.values():
        if points:
            ax.axhline(points[-1][1], color="tab:red", linestyle="--", label="alarm threshold")
    ax.set_ylabel("sequential test statistic")
    return None if drawn else "no canary in the policy, or its reference window is not full yet"


def _quality(ax: Any, page: _Page) -> str | None:
    measured = page.timeline.gauge("rendezvous_model_quality", ["model", "version", "measure"])
    names = sorted({f"{model} {version}".strip() for model, version, _ in measured})
    colors = {name: f"C{i}" for i, name in enumerate(names)}  # one per model version
    drawn = 0
    for (model, version, measure), points in sorted(measured.items()):
        name = f"{model} {version}".strip()
        if measure in ("roc_auc", "accuracy") and points:
            ax.plot([t - page.start_s for t, _ in points], [v for _, v in points], color=colors[name],
                    linestyle="-" if measure == "roc_auc" else ":", label=f"{name}: {measure.replace('_', ' ')}",
                    marker="." if len(points) < 30 else None)
            drawn += 1
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8, label="chance (AUC)")
    ax.set_ylabel("ROC AUC / accuracy")
    return None if drawn else "no labelled outcomes have arrived"


#: (file stem, title, draw): each draw returns why its chart is empty, or None.
CHARTS: list[tuple[str, str, Callable[[Any, _Page], str | None]]] = [
    ("latency", "Answer latency, with the SLA", _latency),
    ("answers", "Answers by model and reason", _answers),
    ("shares", "Traffic shares and posterior means", _shares),
    ("drift", "Canary drift: the champion's sequential test", _drift),
    ("quality", "Live model quality from outcomes", _quality),
]


def detection_markers(timeline: Timeline) -> list[Marker]:
    """When the canary first raised drift, from ``rendezvous_drift_detected``."""
    for points in timeline.gauge("rendezvous_drift_detected", []).values():
        for at, value in points:
            if value >= 1:
                return [Marker(at, "drift detected", "tab:red")]
    return []


def write_report(directory: Path, timeline: Timeline, title: str, sla_s: float | None = None,
                 markers: Sequence[Marker] = (), facts: Mapping[str, Any] | None = None) -> Path:
    """Draw every chart of :data:`CHARTS` into ``directory`` and the page that shows them; return the page."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:  # an optional dependency: the runner image goes without
        raise ReportError("the report needs matplotlib: pip install 'rendezvous[report]'") from exc
    directory.mkdir(parents=True, exist_ok=True)
    page = _Page(timeline, timeline.start_s, sla_s, [*markers, *detection_markers(timeline)])
    figures = []
    for stem, heading, draw in CHARTS:
        fig, ax = plt.subplots(figsize=(9, 3.4), dpi=100)
        empty = draw(ax, page)
        for m in page.markers:
            ax.axvline(m.at_s - page.start_s, color=m.color, linestyle="-.", linewidth=1, label=m.label)
        if empty:
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_xlim(0, max(timeline.end_s - page.start_s, 1.0))
        ax.set_title(heading)
        ax.set_xlabel(f"seconds since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(page.start_s))}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        (directory / f"{stem}.png").write_bytes(buffer.getvalue())
        figures.append((stem, heading, empty, base64.b64encode(buffer.getvalue()).decode()))
    target = directory / "index.html"
    target.write_text(_html(title, figures, facts or {}))
    return target


def _html(title: str, figures: list[tuple[str, str, str | None, str]], facts: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    charts = "".join(
        f'<figure><img id="{stem}" alt="{html.escape(heading)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(heading)}{' (' + html.escape(empty) + ')' if empty else ''}</figcaption></figure>"
        for stem, heading, empty, data in figures)
    # the page marks which charts the browser decoded: tests/test_report.py reads it from a headless Chromium
    script = ("window.addEventListener('load', () => { document.body.dataset.rendered = [...document.images]"
              ".filter(i => i.complete && i.naturalWidth > 0).map(i => i.id).join(' '); });")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1000px}figure{margin:1.5em 0}"
            "img{max-width:100%}th{text-align:left;padding-right:1em}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><table>{rows}</table>{charts}<script>{script}</script></body></html>")
