"""Benchmark of the routing strategies: a simulation driving the real decision code.

    python -m benchmarks.bandit [--requests 20000] [--seeds 5] [--out benchmarks/results/bandit.json]

Five models of different accuracy and latency score every request; the best one
(m3) degrades half way and m4 becomes the best. Outcomes (the truth) arrive
``--outcome-delay-ms`` after each request. The simulation runs the same Router,
policies, ScoreIndex and Learner as a worker, with an injected clock: requests
arrive every 10 ms, scores at their model's latency, outcomes after the delay, and
the router is ticked at its own wake times.

Regret of a request, two ways: of the *choice* (the best model's accuracy at that
moment minus the preferred model's: the bandit's own decision, the standard
definition), and of the *answer* actually returned (a default counts as a coin
flip), which adds what latency fallbacks cost every strategy alike. Reported per
strategy, averaged over seeds, with
each model's share of traffic over time and how many requests after the change
the traffic took to move to the new best model. Written as JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from policies import load_policy_text
from rendezvous.kernel.wire import Score
from rendezvous.routing.outcomes import ScoreIndex
from rendezvous.routing.policy import compile_policy
from rendezvous.routing.router import Router

MODELS = {  # accuracy before, accuracy after the change, mean latency ms
    "m1": (0.80, 0.80, 4.0),
    "m2": (0.85, 0.85, 8.0),
    "m3": (0.93, 0.70, 12.0),
    "m4": (0.88, 0.90, 16.0),
    "m5": (0.75, 0.75, 6.0),
}
STEP_MS = 10.0  # one request every 10 ms
CHAIN = """  chain:
    - {model: m3, wait_ms: 25}
    - {model: m4, wait_ms: 25}
    - {model: m2, wait_ms: 15}
    - {model: m1, wait_ms: 15}
    - {model: m5}
"""
LEARNING = "learning:\n  reward: {kind: bernoulli, threshold: 0.5}\n  forgetting: {half_life_s: %g}\n"
STRATEGIES = {
    "fixed": "  strategy: fixed\n",
    "weighted": "  strategy: weighted\n  weights: {m1: 1, m2: 1, m3: 1, m4: 1, m5: 1}\n",
    "epsilon-greedy": "  strategy: epsilon-greedy\n  epsilon: 0.1\n",
    "thompson": "  strategy: thompson\n",
}


def accuracy(model: str, i: int, change_at: int) -> float:
    before, after, _ = MODELS[model]
    return before if i < change_at else after


def simulate(strategy: str, requests: int, seed: int, outcome_delay_ms: float, half_life_s: float) -> dict[str, Any]:
    doc = load_policy_text(f"name: sim\nversion: 1\nsla_ms: 100\ndefault: {{score: 0.5}}\nrouting:\n"
                           f"{STRATEGIES[strategy]}{CHAIN}{LEARNING % half_life_s}")
    rng = random.Random(seed)
    compiled = compile_policy(doc, rng=random.Random(seed + 1000))
    router, index, rule = Router(compiled), ScoreIndex(3_600_000, 10**6), compiled.reward_rule
    change_at = requests // 2
    events: list[tuple[float, int, str, tuple]] = []
    seq = 0
    for i in range(requests):
        t = i * STEP_MS
        truth = rng.random() < 0.5
        events.append((t, seq, "request", (i, truth)))
        seq += 1
        for model, (_, _, mean_latency) in MODELS.items():
            latency = rng.expovariate(1.0 / mean_latency)
            correct = rng.random() < accuracy(model, i, change_at)
            predicts = truth if correct else not truth
            events.append((t + latency, seq, "score", (i, model, 0.8 if predicts else 0.2)))
            seq += 1
        events.append((t + outcome_delay_ms, seq, "outcome", (i, truth)))
        seq += 1
    heapq.heapify(events)
    returned: dict[int, str | None] = {}
    preferred: dict[int, str] = {}

    def take(step) -> None:  # noqa: ANN001
        for d in step.decisions:
            i = int(d.pending.request_id)
            returned[i] = d.choice.model
            preferred[i] = d.pending.plan.stages[0].model
            index.record(d.pending.request_id, {m: v.score for m, v in d.pending.scores.items()},
                         d.choice.model, d.decided_ms)
        for request_id, model, score in step.late:
            index.add_late(request_id, model, score)

    while events:
        wake = router.next_wake_ms()
        if wake is not None and wake < events[0][0]:
            take(router.on_tick(wake))
            continue
        t, _, kind, data = heapq.heappop(events)
        if kind == "request":
            take(router.on_request(str(data[0]), 0, t, None, t))
        elif kind == "score":
            i, model, score = data
            take(router.on_scores(model, "1", [Score(str(i), t, t, t, score=score)], None, t))
        else:
            i, truth = data
            _, observations = index.credit(str(i), truth, t, rule, t)
            compiled.learner.observe_all(observations)
    best = np.asarray([max(accuracy(m, i, change_at) for m in MODELS) for i in range(requests)])
    answered = np.asarray([accuracy(returned[i], i, change_at) if returned.get(i) else 0.5 for i in range(requests)])
    chose = np.asarray([accuracy(preferred[i], i, change_at) for i in range(requests)])
    return {"regret": np.cumsum(best - chose), "answer_regret": np.cumsum(best - answered),
            "preferred": [preferred.get(i) for i in range(requests)],
            "returned": [returned.get(i) for i in range(requests)], "change_at": change_at}


def shares(picks: list[str | None], window: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {m: [] for m in MODELS}
    for start in range(0, len(picks), window):
        chunk = picks[start:start + window]
        for m in MODELS:
            out[m].append(round(chunk.count(m) / len(chunk), 4))
    return out


def moved_after(picks: list[str | None], change_at: int, to: str, window: int = 200, share: float = 0.5) -> int | None:
    """Requests after the change until the new best is preferred for ``share`` of a ``window``, and stays so."""
    arr = np.asarray([p == to for p in picks[change_at:]], dtype=float)
    if len(arr) < window:
        return None
    above = np.convolve(arr, np.ones(window) / window, mode="valid") >= share
    if not above[-1]:
        return None
    last_below = np.flatnonzero(~above)
    k = int(last_below[-1]) + 1 if len(last_below) else 0  # from here on, every window is above
    return k + window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--outcome-delay-ms", type=float, default=2_000.0)
    parser.add_argument("--half-life-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bandit.json")
    args = parser.parse_args()
    report: dict[str, Any] = {"models": {m: {"accuracy_before": a, "accuracy_after": b, "mean_latency_ms": lat}
                                         for m, (a, b, lat) in MODELS.items()},
                              "requests": args.requests, "seeds": args.seeds, "request_interval_ms": STEP_MS,
                              "outcome_delay_ms": args.outcome_delay_ms, "half_life_s": args.half_life_s,
                              "strategies": {}}
    curves: dict[str, np.ndarray] = {}
    thompson_shares = None
    for strategy in STRATEGIES:
        started = time.perf_counter()
        runs = [simulate(strategy, args.requests, seed, args.outcome_delay_ms, args.half_life_s)
                for seed in range(args.seeds)]
        curves[strategy] = np.mean([r["regret"] for r in runs], axis=0)
        answer_regret = float(np.mean([r["answer_regret"][-1] for r in runs]))
        moved = [moved_after(r["preferred"], r["change_at"], "m4") for r in runs]
        report["strategies"][strategy] = {
            "cumulative_regret": round(float(curves[strategy][-1]), 1),
            "regret_first_half": round(float(curves[strategy][runs[0]["change_at"] - 1]), 1),
            "cumulative_answer_regret": round(answer_regret, 1),
            "requests_until_traffic_moved_to_m4": moved,
            "share_returned": {m: round(np.mean([r["returned"].count(m) / args.requests for r in runs]), 4)
                               for m in MODELS},
        }
        if strategy == "thompson":
            thompson_shares = shares(runs[0]["preferred"], window=500)
        print(f"[{time.strftime('%H:%M:%S')}] {strategy:15s} regret: choice {curves[strategy][-1]:7.1f}, "
              f"answer {answer_regret:7.1f}  "
              f"moved to m4 after {moved} requests  ({time.perf_counter() - started:.1f}s)", file=sys.stderr)
    s = report["strategies"]
    report["thompson_preferred_share_per_500"] = thompson_shares
    report["ratios"] = {
        "thompson_regret_over_epsilon_greedy": round(s["thompson"]["cumulative_regret"]
                                                     / s["epsilon-greedy"]["cumulative_regret"], 3),
        "thompson_answer_regret_over_epsilon_greedy": round(s["thompson"]["cumulative_answer_regret"]
                                                            / s["epsilon-greedy"]["cumulative_answer_regret"], 3),
        "thompson_requests_to_move_max": max((m for m in s["thompson"]["requests_until_traffic_moved_to_m4"]
                                              if m is not None), default=None),
    }
    report["targets"] = {"thompson_regret_over_epsilon_greedy": "<= 0.5", "thompson_requests_to_move_max": "<= 1000"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(curves, thompson_shares, args.requests // 2, args.out.with_suffix(".png"))
    print(json.dumps(report["ratios"], indent=2))


def plot(curves: dict[str, np.ndarray], thompson_shares: dict[str, list[float]], change_at: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, curve in curves.items():
        a.plot(curve, label=name)
    a.axvline(change_at, color="grey", linestyle=":", label="m3 degrades")
    a.set(title="cumulative regret of the choice (mean over seeds)", xlabel="request", ylabel="regret")
    a.legend()
    x = np.arange(len(next(iter(thompson_shares.values())))) * 500
    b.stackplot(x, *thompson_shares.values(), labels=list(thompson_shares))
    b.axvline(change_at, color="black", linestyle=":")
    b.set(title="thompson: share of requests preferring each model", xlabel="request", ylabel="share", ylim=(0, 1))
    b.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
