"""Clean shutdown for the synchronous services: SIGTERM and SIGINT set a stop event."""

from __future__ import annotations

import logging
import signal
import threading


def stop_on_signals() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT; the service's loop checks it and winds down."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        logging.getLogger("rendezvous").info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
    )
