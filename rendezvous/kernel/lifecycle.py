"""Clean shutdown: SIGTERM and SIGINT set a stop event, and the process ends within a grace period.

A service winds down on its first stop signal: it flushes what it owes and commits its
offsets. With the broker unreachable, that flush and the final commit can wait for ever
(librdkafka retries for ``message.timeout.ms``, aiokafka leaves its group for a minute),
so the stop signal also arms a :class:`StopDeadline`: if the process is still running
``grace_s`` later, it logs what it was doing and exits. Nothing acknowledged is lost by
that: whatever the process had not committed is read again by whoever takes over.

Python runs signal handlers on the main thread only, between bytecodes: a main thread
blocked inside librdkafka (a synchronous commit to a broker that went away: measured
44 s) would take SIGTERM only when the call returns, and nothing would arm the
deadline. So a service runs its loop with :func:`run_off_the_main_thread`, which keeps
the main thread free to take signals.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DEFAULT_STOP_GRACE_S", "StopDeadline", "stop_on_signals", "run_off_the_main_thread", "configure_logging"]

#: How long a service may take to stop after SIGTERM; Docker's own default grace is also 10 s.
DEFAULT_STOP_GRACE_S = 10.0

log = logging.getLogger("rendezvous")
T = TypeVar("T")


class StopDeadline:
    """Ends the process (exit code 1) ``grace_s`` after :meth:`arm` unless it has exited by then."""

    def __init__(self, grace_s: float = DEFAULT_STOP_GRACE_S, what: str = "service") -> None:
        self.grace_s, self.what = grace_s, what
        self._armed = False
        self._lock = threading.Lock()

    def arm(self) -> None:
        """Start the countdown (once; later calls do nothing)."""
        with self._lock:
            if self._armed:
                return
            self._armed = True
        threading.Thread(target=self._expire, name="stop-deadline", daemon=True).start()

    def _expire(self) -> None:
        time.sleep(self.grace_s)
        log.error("%s did not stop within %gs of the stop signal (is the broker reachable?); exiting now. "
                  "What it had not committed is read again by whoever takes over.", self.what, self.grace_s)
        logging.shutdown()  # flush the log handlers: os._exit skips them
        os._exit(1)


def stop_on_signals(deadline: StopDeadline | None = None) -> threading.Event:
    """An event set by the first SIGTERM or SIGINT, which also arms ``deadline``; a second signal exits at once."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("received %s again: exiting without finishing the stop", name)
            os._exit(1)
        log.info("received %s, shutting down", name)
        stop.set()
        if deadline is not None:
            deadline.arm()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def run_off_the_main_thread(loop: Callable[[], T], name: str = "service-loop") -> T:
    """Run ``loop()`` on a thread of its own while the main thread waits for it, free to take signals;
    return its result or raise its exception (``SystemExit`` included) on the main thread.

    >>> run_off_the_main_thread(lambda: threading.current_thread() is threading.main_thread())
    False
    """
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = loop()
        except BaseException as exc:  # noqa: BLE001 -- handed to the main thread, which raises it
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)  # daemon: the stop deadline may end the process
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # a bounded wait: the main thread takes a signal at once, and its handler runs
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
    )
