"""Policies on a live system: hot reload, shadows, ramps and rollback, outcomes, explain."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from policies.record import POLICY_KEY
from tests.conftest import System, cli, eventually, scripted_spec, write_policy

pytestmark = pytest.mark.slow


def policy_text(version: int, chain: str, models: str = "", routing: str = "strategy: fixed") -> str:
    return f"""\
        name: live
        version: {version}
        sla_ms: 100
        default: {{score: 0.0}}
        routing:
          {routing}
          chain: {chain}
        {models}
        """


def start(system: System, models: dict[str, float], policy: str, workers: int = 2) -> list[str]:
    d = system.directory
    names = system.start_models(*(scripted_spec(d, m, s) for m, s in models.items()))
    system.workers = system.start_workers(write_policy(d, policy), workers)
    system.wait_ready(names + system.workers)
    system.model_names = dict(zip(models, names, strict=False))
    system.warm_up()
    return system.workers


def send_outcomes(system: System, outcomes: list[tuple[str, object]]) -> None:
    for rid, outcome in outcomes:
        system.sender.send_outcome(rid, outcome, system.partition_of(rid))
    system.sender.flush()


def test_hot_reload_under_load_switches_every_worker_within_a_second(system: System):
    workers = start(system, {"a": 0.9, "b": 0.2}, policy_text(1, "[{model: a, wait_ms: 20}, {model: b}]"))
    ids = [f"hot-{i}" for i in range(1200)]  # 12 s at 100/s: the reload happens in the middle
    sender = threading.Thread(target=system.send, args=([(rid, {}) for rid in ids], 100), daemon=True)
    sender.start()
    while len(system.collector.results) < 300:
        time.sleep(0.05)
    v2 = system.directory / "v2.yaml"
    # b's wait leaves room for a loaded machine's hops (here 10-40 ms), so "b answered" is about routing
    v2.write_text(policy_text(2, "[{model: b, wait_ms: 50}, {model: a}]").replace("        ", ""))
    done = cli(system, "policy", "apply", str(v2), "--reason", "prefer b")
    applied_ms = time.time() * 1000  # the record is on the topic by now
    assert done.returncode == 0, done.stderr
    sender.join()
    results = system.results_for(ids)
    assert Counter(len(r) for r in results.values()) == Counter({1: len(ids)})  # none lost, none doubled
    firsts = [r[0] for r in results.values()]
    assert {r.policy_version for r in firsts} == {1, 2}
    late_v1 = [r for r in firsts if r.policy_version == 1 and r.request_ms > applied_ms + 1000]
    assert not late_v1, f"{len(late_v1)} requests got v1 more than a second after v2 was applied"
    v2 = [r for r in firsts if r.policy_version == 2]
    v2_chain = {("b", "preferred"), ("a", "fallback"), (None, "default")}  # v2: b, then a, then the default
    odd = Counter((r.model, r.reason) for r in v2 if (r.model, r.reason) not in v2_chain)
    assert not odd, odd
    assert sum(r.model == "b" for r in v2) > 0.5 * len(v2)
    assert {r.worker for r in firsts if r.policy_version == 2} == {r.worker for r in firsts}  # on both workers
    for w in workers:
        assert system.stats(w)["policy"]["version"] == 2

    # a broken record on the policies topic is refused; v2 stays in force
    system.produce_raw(system.topics.policies, b'{"policy": {"name": "live", "version": 9}, "applied_ms": 0}',
                       POLICY_KEY)
    assert eventually(lambda: all(system.stats(w)["policy"]["refused_records"] == 1 for w in workers))
    assert all(system.stats(w)["policy"]["version"] == 2 for w in workers)
    assert system.ask("after-bad-policy", {}).model == "b"
    history = cli(system, "policy", "show", "--history")
    assert "v1" in history.stdout and "v2" in history.stdout and "prefer b" in history.stdout


def test_shadows_are_never_returned_but_are_credited_and_the_posterior_is_shared(system: System):
    workers = start(system, {"a": 0.9, "b": 0.3, "s": 0.8},
                    policy_text(1, "[{model: a, wait_ms: 20}, {model: b}]", "models: {s: {role: shadow}}"))
    ids = [f"shadow-{i}" for i in range(300)]
    system.send([(rid, {"s_delay_ms": 0}) for rid in ids], rate=150)
    results = system.results_for(ids)
    assert all(r[0].model != "s" for r in results.values())
    assert any("s" in r[0].candidates for r in results.values())  # recorded with the others
    # truths: positive for every request; a's and s's scores (>= 0.5) are right, b's wrong
    send_outcomes(system, [(rid, True) for rid in ids])
    send_outcomes(system, [(ids[0], True), ("never-sent", True)])  # a duplicate, and an unknown request
    def learned() -> bool:
        stats = [system.stats(w) for w in workers]
        return sum(s["outcomes"].get("credited", 0) for s in stats) == 300 and all(
            s["posterior_means"]["s"] > 0.95 and s["posterior_means"]["b"] < 0.05 for s in stats)
    assert eventually(learned, timeout=20), [system.stats(w) for w in workers]
    stats = [system.stats(w) for w in workers]
    assert sum(s["outcomes"].get("duplicate", 0) for s in stats) == 1
    assert sum(s["outcomes"].get("unknown", 0) for s in stats) == 1
    assert stats[0]["posterior_means"] == stats[1]["posterior_means"]  # one posterior, on every worker

    # a restarted worker rebuilds the posterior from the shared observations
    before = stats[0]["posterior_means"]
    system.runtime.stop([workers[0]], timeout=30)
    [again] = system.start_workers(system.directory / "policy.yaml")
    system.wait_ready([again])
    after = system.stats(again)["posterior_means"]
    assert after == pytest.approx(before, abs=0.01)


def test_a_ramped_model_that_gets_slow_is_rolled_back_automatically(system: System):
    ramp = ("models:\n          n:\n            role: ramp\n            wait_ms: 50\n"
            "            ramp: {start: 0.5, step: 0, p99_latency_ms: 60, min_samples: 20, window: 40}")
    workers = start(system, {"a": 0.9, "b": 0.2, "n": 0.7},
                    policy_text(1, "[{model: a, wait_ms: 20}, {model: b}]", ramp), workers=1)
    quick = [f"ramp-ok-{i}" for i in range(100)]
    system.send([(rid, {}) for rid in quick], rate=100)
    results = system.results_for(quick)
    ramped = [r[0] for r in results.values() if r[0].audit and r[0].audit.get("ramp")]
    assert 30 < len(ramped) < 70  # half the traffic prefers it
    assert sum(r.model == "n" for r in ramped) >= 0.9 * len(ramped)  # and gets it (a stall may cost a fallback)
    assert system.stats(workers[0])["policy"]["version"] == 1

    slow = [f"ramp-slow-{i}" for i in range(80)]
    system.send([(rid, {"n_delay_ms": 120}) for rid in slow], rate=50)  # n now takes 120 ms a request
    assert eventually(lambda: system.stats(workers[0])["policy"]["version"] == 2, timeout=20)
    reasons = system.stats(workers[0])["rollbacks"]
    assert reasons and "n:" in reasons[0] and "p99 latency" in reasons[0]
    after = [f"ramp-after-{i}" for i in range(60)]
    system.send([(rid, {}) for rid in after], rate=100)
    results = system.results_for(after)
    assert all(r[0].policy_version == 2 and r[0].model != "n" for r in results.values())
    shown = json.loads(cli(system, "policy", "show", "--json").stdout)
    assert shown["version"] == 2 and shown["models"]["n"]["role"] == "shadow"
    assert "automatic rollback" in cli(system, "policy", "show", "--history").stdout
    assert all(len(system.collector.results[rid]) == 1 for rid in quick + slow + after)


def test_explain_tells_the_story_of_a_request(system: System):
    start(system, {"a": 0.9, "b": 0.2}, policy_text(1, "[{model: a, wait_ms: 20}, {model: b}]"), workers=1)
    result = system.ask("story-1", {"a_delay_ms": 45})  # a misses its 20 ms: b answers
    time.sleep(0.5)  # a's late score lands
    send_outcomes(system, [("story-1", True)])
    time.sleep(0.5)
    done = cli(system, "explain", "story-1")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "request story-1" in out and "a 1 on" in out and "b 1 on" in out
    assert "late: had not arrived when the answer was decided" in out and f"answered with {result.model} (fallback)" in out
    assert "policy live v1" in out and "outcome True" in out
    story = json.loads(cli(system, "explain", "story-1", "--json").stdout)
    assert {s["model"] for s in story["scores"]} == {"a", "b"} and len(story["results"]) == 1
    assert cli(system, "explain", "nobody-sent-this").returncode == 1


def test_policy_commands_validate_and_refuse(system: System, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: p\nversion: 1\nsla_ms: 100\nrouting: {strategy: thompson, explore: 2, chain: [{model: a}]}\n")
    done = subprocess.run([sys.executable, "-m", "rendezvous", "policy", "validate", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "routing.explore: Input should be less than or equal to 1" in done.stderr
    good = tmp_path / "good.yaml"
    good.write_text("name: p\nversion: 3\nsla_ms: 100\nrouting: {strategy: fixed, chain: [{model: a}]}\n")
    unknown = cli(system, "policy", "apply", str(good))  # no model "a" scores on this system
    assert unknown.returncode == 2 and "a has not scored" in unknown.stderr and "--allow-missing" in unknown.stderr
    assert cli(system, "policy", "apply", str(good), "--allow-missing").returncode == 0
    good.write_text(good.read_text().replace("version: 3", "version: 2"))
    refused = cli(system, "policy", "apply", str(good), "--allow-missing")
    assert refused.returncode == 1 and "not higher than v3" in refused.stderr
