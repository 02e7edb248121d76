"""Crashes, restarts and rebalances: no request lost, none answered twice."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest

from tests.conftest import CHAIN_POLICY, System, scripted_spec, write_policy

pytestmark = pytest.mark.slow


def start(system: System, workers: int = 1) -> list[str]:
    d = system.directory
    models = system.start_models(*(scripted_spec(d, m, s) for m, s in (("m1", 0.1), ("m2", 0.2), ("m3", 0.3))))
    system.policy_path = write_policy(d, CHAIN_POLICY)
    names = system.start_workers(system.policy_path, workers)
    system.wait_ready(models + names)
    system.warm_up()
    return names


def send_in_background(system: System, ids: list[str], rate: float) -> threading.Thread:
    thread = threading.Thread(target=system.send, args=([(rid, {}) for rid in ids], rate), daemon=True)
    thread.start()
    return thread


def assert_exactly_once(system: System, ids: list[str], timeout: float = 60.0) -> dict[str, list]:
    results = system.results_for(ids, timeout)
    counts = Counter(len(r) for r in results.values())
    assert counts == Counter({1: len(ids)}), f"results per request: {dict(counts)}"
    return results


def test_a_worker_killed_mid_stream_and_restarted_loses_nothing_and_answers_nothing_twice(system: System):
    [worker] = start(system)
    ids = [f"kill-{i}" for i in range(800)]
    sender = send_in_background(system, ids, rate=100)
    while len(system.collector.results) < 250:  # well into the stream
        time.sleep(0.05)
    system.signal(worker, signal.SIGKILL)
    system.runtime.stop([worker], timeout=5)
    [replacement] = system.start_workers(system.policy_path)
    sender.join()
    results = assert_exactly_once(system, ids, timeout=90)
    answered_by = Counter(r[0].worker for r in results.values())
    assert len(answered_by) == 2, answered_by  # both the killed worker and its replacement answered some
    late = [r[0] for r in results.values() if r[0].latency_ms > 100]
    assert late, "the outage should have delayed some answers; otherwise the kill hit nothing in flight"


def test_two_workers_share_the_partitions(system: System):
    workers = start(system, workers=2)
    time.sleep(1.0)  # let the second rebalance settle
    owned = [set(system.stats(w)["partitions"]) for w in workers]
    assert owned[0] and owned[1] and not owned[0] & owned[1] and owned[0] | owned[1] == {0, 1, 2, 3}
    ids = [f"pair-{i}" for i in range(400)]
    system.send([(rid, {}) for rid in ids], rate=200)
    results = assert_exactly_once(system, ids)
    by_worker = Counter(r[0].worker for r in results.values())
    assert len(by_worker) == 2 and min(by_worker.values()) > 50, by_worker


def test_a_worker_stopped_with_sigterm_hands_over_without_loss(system: System):
    workers = start(system, workers=2)
    ids = [f"term-{i}" for i in range(600)]
    sender = send_in_background(system, ids, rate=100)
    while len(system.collector.results) < 200:
        time.sleep(0.05)
    started = time.monotonic()
    system.runtime.stop([workers[0]], timeout=30)  # SIGTERM: drain in-flight requests, commit, leave
    assert time.monotonic() - started < 15
    assert system.runtime.supervisor.get(workers[0]) is None
    sender.join()
    assert_exactly_once(system, ids, timeout=60)
