"""The Grafana dashboards, as code: ``python compose/dashboards.py`` writes ``compose/grafana/dashboards/*.json``.

Built with Grafana's own typed builders (``grafana-foundation-sdk``, for the
Grafana version compose runs; ``pip install 'rendezvous[dashboards]'``), so a
panel, query or option Grafana does not know fails here, not in Grafana.

Each panel is one PromQL query over the metrics the rendezvous, the model
runners and the decoy export (see rendezvous/service/metrics.py). The test
suite runs every query against a real Prometheus scraping a live system, and
checks that the JSON files here are current (``--check``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

OUT = Path(__file__).parent / "grafana" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")

# (title, unit, [(legend, query)], kind)
Panel = tuple[str, str, list[tuple[str, str]], str]

DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "canary-drift": ("rendezvous — canary drift", [
        ("Drift detected (sequential test)", "none",
         [("{{champion}} vs {{canary}}", "max by (champion, canary) (rendezvous_drift_detected)")], "stat"),
        ("Sequential test statistic vs threshold", "none",
         [("against {{against}}", "max by (against) (rendezvous_drift_cusum)"),
          ("threshold", "max(rendezvous_drift_threshold)")], "timeseries"),
        ("Kolmogorov–Smirnov distance", "none",
         [("against {{against}}", "max by (against) (rendezvous_drift_ks)")], "timeseries"),
        ("Population stability index", "none",
         [("against {{against}}", "max by (against) (rendezvous_drift_psi)")], "timeseries"),
        ("Wasserstein distance", "none",
         [("against {{against}}", "max by (against) (rendezvous_drift_wasserstein)")], "timeseries"),
        ("Paired difference champion − canary (mean over window)", "none",
         [("{{champion}} − {{canary}}", "avg by (champion, canary) (rendezvous_drift_paired_mean_difference)")],
         "timeseries"),
        ("Drift alarms", "none",
         [("{{champion}} vs {{canary}}", "sum by (champion, canary) (rendezvous_drift_alarms_total)")], "stat"),
    ]),
    "models": ("rendezvous — models", [
        ("Scores per second", "ops",
         [("{{model}} {{outcome}}", "sum by (model, outcome) (rate(rendezvous_model_scores_total[1m]))")], "timeseries"),
        ("Scoring latency p99 (model call)", "s",
         [("{{model}}", "histogram_quantile(0.99, sum by (le, model) (rate(rendezvous_model_scoring_seconds_bucket[1m])))")],
         "timeseries"),
        ("Request to score p99", "s",
         [("{{model}}", "histogram_quantile(0.99, sum by (le, model) "
                        "(rate(rendezvous_model_request_to_score_seconds_bucket[1m])))")], "timeseries"),
        ("Score arrival at the rendezvous p99", "s",
         [("{{model}}", "histogram_quantile(0.99, sum by (le, model) (rate(rendezvous_score_arrival_seconds_bucket[1m])))")],
         "timeseries"),
        ("Score distribution (last 5 min)", "none",
         [("{{model}} ≤ {{le}}", "sum by (model, le) (increase(rendezvous_model_score_bucket[5m]))")], "heatmap"),
        ("Median score", "none",
         [("{{model}}", "histogram_quantile(0.5, sum by (le, model) (rate(rendezvous_model_score_bucket[5m])))")],
         "timeseries"),
        ("Model backlog (consumer lag)", "short",
         [("{{model}} {{version}}", "sum by (model, version) (rendezvous_model_consumer_lag_records)")], "timeseries"),
        ("Accuracy on outcomes (champion, canary, candidates)", "percentunit",
         [("{{model}} {{version}}", 'max by (model, version) (rendezvous_model_quality{measure="accuracy"})')], "timeseries"),
        ("ROC AUC on outcomes", "none",
         [("{{model}} {{version}}", 'max by (model, version) (rendezvous_model_quality{measure="roc_auc"})')], "timeseries"),
        ("Log loss on outcomes (lower is better)", "none",
         [("{{model}} {{version}}", 'max by (model, version) (rendezvous_model_quality{measure="log_loss"})')], "timeseries"),
        ("Brier score on outcomes (lower is better)", "none",
         [("{{model}} {{version}}", 'max by (model, version) (rendezvous_model_quality{measure="brier"})')], "timeseries"),
    ]),
    "routing": ("rendezvous — routing", [
        ("Selection share", "percentunit",
         [("{{model}}", "sum by (model) (rate(rendezvous_results_total[1m])) / scalar(sum(rate(rendezvous_results_total[1m])))")],
         "timeseries"),
        ("Results by reason", "ops",
         [("{{reason}}", "sum by (reason) (rate(rendezvous_results_total[1m]))")], "timeseries"),
        ("Traffic share (last 1000 results)", "percentunit",
         [("{{model}}", "avg by (model) (rendezvous_traffic_share)")], "timeseries"),
        ("Posterior mean reward", "percentunit",
         [("{{model}}", "avg by (model) (rendezvous_posterior_mean)")], "timeseries"),
        ("Policy version", "none", [("version", "max(rendezvous_policy_version)")], "stat"),
    ]),
    "sla-backlog": ("rendezvous — SLA and backlog", [
        ("SLA compliance (5 min)", "percentunit",
         [("within SLA", "1 - sum(increase(rendezvous_sla_misses_total[5m]))"
                         " / clamp_min(sum(increase(rendezvous_results_total[5m])), 1)")],
         "stat"),
        ("Result latency, with the SLA", "s",
         [("p50", "histogram_quantile(0.5, sum by (le) (rate(rendezvous_result_latency_seconds_bucket[1m])))"),
          ("p99", "histogram_quantile(0.99, sum by (le) (rate(rendezvous_result_latency_seconds_bucket[1m])))"),
          ("SLA", "max(rendezvous_policy_sla_seconds)")],
         "timeseries"),
        ("SLA misses by cause (5 min): intake, timer, write", "short",
         [("{{cause}}", "sum by (cause) (increase(rendezvous_sla_misses_total[5m]))")], "timeseries"),
        ("Decision lateness and result write p99", "s",
         [("decided − due", "histogram_quantile(0.99, sum by (le) (rate(rendezvous_decision_lateness_seconds_bucket[1m])))"),
          ("write (broker ack)", "histogram_quantile(0.99, sum by (le) (rate(rendezvous_result_write_seconds_bucket[1m])))")],
         "timeseries"),
        ("Prediction latency p99 (result − event time)", "s",
         [("p99", "histogram_quantile(0.99, sum by (le) (rate(rendezvous_prediction_latency_seconds_bucket[1m])))")],
         "timeseries"),
        ("Platform backlog (consumer lag)", "short",
         [("{{topic}}", "sum by (topic) (rendezvous_consumer_lag_records)")], "timeseries"),
        ("Oldest unanswered request", "s", [("age", "max(rendezvous_oldest_pending_age_seconds)")], "timeseries"),
        ("Pending requests", "short", [("pending", "sum(rendezvous_pending_requests)")], "timeseries"),
        ("Late and duplicate scores", "ops",
         [("{{kind}}", "sum by (kind) (rate(rendezvous_scores_dropped_total[5m]))")], "timeseries"),
        ("Dead letters (5 min)", "short",
         [("{{reason}}", "sum by (reason) (increase(rendezvous_deadletters_total[5m]))")], "timeseries"),
        ("Decoy archive", "Bps",
         [("bytes/s", "sum(rate(rendezvous_decoy_bytes_total[1m]))")], "timeseries"),
    ]),
}


def _query(ref: str, legend: str, expr: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().ref_id(ref).expr(expr).legend_format(legend).datasource(DATASOURCE)


def _panel(i: int, title: str, unit: str, targets: list[tuple[str, str]], kind: str) -> Builder[Any]:
    builder = {"stat": stat.Panel, "timeseries": timeseries.Panel, "heatmap": heatmap.Panel}[kind]()
    builder.id(i + 1).title(title).unit(unit).datasource(DATASOURCE)
    builder.grid_pos(GridPos(h=8, w=12, x=12 * (i % 2), y=8 * (i // 2)))
    for j, (legend, expr) in enumerate(targets):
        builder.with_target(_query(chr(65 + j), legend, expr))
    return builder


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    """One dashboard, built with Grafana's typed builders, as the JSON Grafana provisions."""
    built = (Dashboard(title).uid(f"rendezvous-{uid}").tags(["rendezvous"]).time("now-30m", "now").refresh("10s")
             .timezone("browser").editable())
    for i, (panel_title, unit, targets, kind) in enumerate(panels):
        built.with_panel(_panel(i, panel_title, unit, targets, kind))
    return json.loads(json.dumps(built.build(), cls=JSONEncoder))


def render() -> dict[str, str]:
    return {f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2, ensure_ascii=False) + "\n"
            for uid, (title, panels) in DASHBOARDS.items()}


def main() -> int:
    files = render()
    if "--check" in sys.argv:
        stale = [n for n, text in files.items() if not (OUT / n).is_file() or (OUT / n).read_text() != text]
        if stale:
            print(f"stale dashboards: {', '.join(stale)}; run python compose/dashboards.py", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
