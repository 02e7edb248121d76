"""The router alone, no I/O: CPU time per request (one request, three scores, one decision).

    python -m benchmarks.router

The floor of the worker's per-request cost in the decision logic; Faust's own cost per
event (benchmarks.pipeline, bare Faust) is about ten times as much.
"""

from __future__ import annotations

import time

from rendezvous.kernel.wire import Score
from rendezvous.routing.policy import FixedChain
from rendezvous.routing.router import Router

POLICY = FixedChain("bench", 1, [("m3", 30), ("m2", 30), ("m1", None)], sla_ms=100)


def per_request_us(n: int = 50_000) -> float:
    router = Router(POLICY, sla_guard_ms=5)
    now = 1000.0
    started = time.process_time()
    for i in range(n):
        rid = f"r{i}"
        router.on_request(rid, 0, now, None, now)
        for k, model in enumerate(("m1", "m2", "m3")):  # the preferred model last: every score is evaluated
            router.on_scores(model, "1", [Score(rid, now, now, now, 0.1 * (k + 1))], None, now + k + 1)
        now += 0.01
    return (time.process_time() - started) / n * 1e6


if __name__ == "__main__":
    print(f"{min(per_request_us() for _ in range(3)):.1f} us of CPU per request (best of 3)")
