"""Benchmark of the canary's drift detection: false alarms on stationary streams, delay on shifted ones.

    python -m benchmarks.drift [--quick] [--out benchmarks/results/drift.json]

Synthetic score streams, run through :class:`canary.drift.DriftMonitor` exactly as
the rendezvous runs it (reference of 2,000 requests, default tuning). Scores are
Beta(2, 5), like a classifier's; the canary scores the same requests with a
correlated model (latent correlation 0.95). A shift of KS distance D moves the
latent value by 2·Φ⁻¹((1 + D) / 2) standard deviations, which changes the
scores' distribution by exactly D in Kolmogorov–Smirnov distance. Two kinds:

* input shift: champion and canary both move (caught against the reference);
* champion degrades: only the champion moves (caught against the canary).

False alarms: the share of stationary streams of 100,000 scores with any alarm
(target ≤ 1%). Delay: scores after the change until the alarm (target: KS 0.1
within 500). Writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
from scipy.stats import beta, norm

from canary.drift import DriftMonitor, DriftSettings

SETTINGS = DriftSettings(every=10**12)  # the window statistics are descriptive; the alarm does not use them
RHO = 0.95
SHIFTS = (0.05, 0.1, 0.15, 0.2, 0.3)


def scores(latent: np.ndarray) -> np.ndarray:
    return beta.ppf(norm.cdf(latent), 2, 5)


def stream(rng: np.random.Generator, n: int, change_at: int | None, delta: float, kind: str):
    g = rng.standard_normal(n)
    champion_latent = RHO * g + np.sqrt(1 - RHO**2) * rng.standard_normal(n)
    canary_latent = g.copy()
    if change_at is not None:
        champion_latent[change_at:] += delta
        if kind == "input":
            canary_latent[change_at:] += delta
    return scores(champion_latent), scores(canary_latent)


def false_alarm(seed: int, n: int) -> int | None:
    """Index of the first alarm on a stationary stream, or None."""
    rng = np.random.default_rng(seed)
    champion, canary = stream(rng, SETTINGS.reference_size + n, None, 0.0, "input")
    monitor = DriftMonitor(SETTINGS)
    for c, k in zip(champion.tolist(), canary.tolist(), strict=False):
        monitor.learn_one(c, k)
        if monitor.alarms:
            return monitor.monitored
    return None


def delay(args: tuple[int, float, str, int]) -> int | None:
    seed, ks, kind, limit = args
    rng = np.random.default_rng(seed)
    delta = 2 * norm.ppf((1 + ks) / 2)
    warm = SETTINGS.reference_size + 1000
    champion, canary = stream(rng, warm + limit, warm, delta, kind)
    monitor = DriftMonitor(SETTINGS)
    for i, (c, k) in enumerate(zip(champion.tolist(), canary.tolist(), strict=False)):
        monitor.learn_one(c, k)
        if monitor.alarms:
            return i - warm + 1 if i >= warm else -1  # -1: a false alarm before the change
    return None


def _fa(args: tuple[int, int]) -> int | None:
    return false_alarm(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/drift.json"))
    args = parser.parse_args()
    fa_streams, delay_streams, n = (60, 100, 100_000) if args.quick else (400, 300, 100_000)
    started = time.monotonic()
    out: dict = {"settings": SETTINGS.__dict__ | {"every": "off"}, "stream_length": n, "latent_correlation": RHO}
    with multiprocessing.Pool() as pool:
        print(f"false alarms: {fa_streams} stationary streams of {n:,} scores ...", flush=True)
        firsts = []
        for i, first in enumerate(pool.imap_unordered(_fa, [(seed, n) for seed in range(fa_streams)])):
            firsts.append(first)
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{fa_streams} streams, {sum(f is not None for f in firsts)} with an alarm", flush=True)
        alarmed = sum(f is not None for f in firsts)
        out["false_alarms"] = {"streams": fa_streams, "with_alarm": alarmed, "rate": alarmed / fa_streams,
                               "upper_95": min(1.0, (alarmed + 3) / fa_streams) if alarmed == 0 else None,
                               "target": 0.01}
        print(f"  {alarmed}/{fa_streams} streams alarmed ({alarmed / fa_streams:.2%})", flush=True)
        out["delay"] = {}
        for kind in ("input", "champion"):
            out["delay"][kind] = {}
            for ks in SHIFTS:
                jobs = [(10_000 + seed, ks, kind, 5000) for seed in range(delay_streams)]
                found = pool.map(delay, jobs)
                hits = np.array([d for d in found if d is not None and d > 0])
                missed = sum(d is None for d in found)
                row = {"streams": delay_streams, "median": float(np.median(hits)) if len(hits) else None,
                       "p90": float(np.percentile(hits, 90)) if len(hits) else None,
                       "within_500": float(np.mean([d is not None and 0 < d <= 500 for d in found])),
                       "missed_in_5000": missed, "false_before_change": sum(d == -1 for d in found)}
                out["delay"][kind][str(ks)] = row
                print(f"  {kind:8s} KS {ks:.2f}: median delay {row['median']}, p90 {row['p90']}, "
                      f"within 500: {row['within_500']:.0%}", flush=True)
    out["target"] = "KS 0.1 detected within 500 scores (median) at <= 1% false alarms per 100,000 scores"
    out["met"] = {kind: out["delay"][kind]["0.1"]["median"] is not None and out["delay"][kind]["0.1"]["median"] <= 500
                  for kind in ("input", "champion")} | {"false_alarms": out["false_alarms"]["rate"] <= 0.01}
    out["seconds"] = round(time.monotonic() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    plot(out, args.out.with_suffix(".png"))
    print(json.dumps(out["met"]), flush=True)


def plot(out: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install rendezvous[bench]); no PNG", flush=True)
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {"input": "input shift (vs reference)", "champion": "champion degrades (vs canary)"}
    for kind, rows in out["delay"].items():
        xs = [float(k) for k, r in rows.items() if r["median"] is not None]
        ax.plot(xs, [rows[str(x)]["median"] for x in xs], marker="o", label=f"{labels[kind]}: median")
        ax.fill_between(xs, [rows[str(x)]["median"] for x in xs], [rows[str(x)]["p90"] for x in xs], alpha=0.2)
    ax.axhline(500, color="grey", linestyle="--", linewidth=1, label="target at KS 0.1: 500 scores")
    ax.set_xlabel("shift (Kolmogorov–Smirnov distance)")
    ax.set_ylabel("scores until the alarm (median, band to p90)")
    ax.set_yscale("log")
    fa = out["false_alarms"]
    ax.set_title(f"Canary drift detection; false alarms {fa['with_alarm']}/{fa['streams']} streams of 100k")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
