"""Bare Faust: one worker's agent consumes a topic and does nothing.

    python -m benchmarks.faust_bare BOOTSTRAP TOPIC N WEB_PORT

Prints one JSON line: events per second between the first and the N-th event, and
the CPU time (all threads, ``time.process_time``) per event over the same span.
Uses the rendezvous's own Faust app class and settings, so the only difference
from a rendezvous worker is the work done per event.
"""

from __future__ import annotations

import json
import os
import sys
import time

import faust

from rendezvous.kernel.settings import KafkaSettings
from rendezvous.service.app import create_app


def main() -> None:
    bootstrap, topic_name, n, web_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    fetch_wait_ms = int(sys.argv[5]) if len(sys.argv) > 5 else KafkaSettings(bootstrap).fetch_wait_ms
    app = create_app(f"bare-{os.getpid()}", KafkaSettings(bootstrap, fetch_wait_ms=fetch_wait_ms), "127.0.0.1", web_port)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes)
    state = {"count": 0, "first": 0.0, "cpu": 0.0}

    @app.agent(topic)
    async def consume(stream):  # noqa: ANN001
        async for _ in stream.events():
            state["count"] += 1
            if state["count"] == 1:
                state["first"], state["cpu"] = time.perf_counter(), time.process_time()
            elif state["count"] == n:
                rate = (n - 1) / (time.perf_counter() - state["first"])
                cpu_ms = 1000 * (time.process_time() - state["cpu"]) / (n - 1)
                os.write(1, (json.dumps({"events_per_s": round(rate, 1), "cpu_ms_per_event": round(cpu_ms, 4)})
                             + "\n").encode())
                os._exit(0)

    faust.Worker(app, loglevel="error", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
