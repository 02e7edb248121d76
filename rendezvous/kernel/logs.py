"""Logs that stay readable while the broker is away.

Kafka clients log every failed reconnect: aiokafka about 40 lines a second, librdkafka
one per attempt and client. An outage of a minute wrote thousands of identical lines
per service and buried the one line that said what happened. :class:`RepeatFilter`
lets the first of a kind through, then one per ``every_s`` saying how many it held back.
librdkafka's own lines reach Python logging through :data:`KAFKA_CLIENT_LOG` (set as
each client's ``logger``), so the same filter applies to them.

>>> f = RepeatFilter(every_s=30.0, clock=iter([0.0, 1.0, 2.0, 31.0]).__next__)
>>> record = lambda: logging.LogRecord("aiokafka", logging.ERROR, "", 0, "Unable connect to node %s", (1,), None)
>>> [f.filter(record()) for _ in range(3)]
[True, False, False]
>>> last = record(); f.filter(last), last.getMessage()
(True, 'Unable connect to node 1 (and 2 more like it in the last 30s)')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

__all__ = ["RepeatFilter", "KAFKA_CLIENT_LOG", "quiet_repeats"]

#: Where librdkafka's log lines go (each confluent-kafka client's ``logger``).
KAFKA_CLIENT_LOG = logging.getLogger("rendezvous.kafka.client")


class RepeatFilter(logging.Filter):
    """Passes a message (its logger and format string) once per ``every_s``, counting the rest."""

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s, self.clock = every_s, clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # kind -> (last passed, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        kind, now = (record.name, str(record.msg)[:120]), self.clock()
        last = self._seen.get(kind)
        if last is not None and now - last[0] < self.every_s:
            self._seen[kind] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} (and {last[1]} more like it in the last {self.every_s:g}s)"
        if len(self._seen) > 1000:  # kinds are format strings, few; but never unbounded
            self._seen.clear()
        self._seen[kind] = (now, 0)
        return True


def quiet_repeats(names: Iterable[str], every_s: float = 30.0) -> None:
    """Give each named logger and every existing logger below it a :class:`RepeatFilter`.

    A logger's filters see only what is logged to it directly, so each child gets its own."""
    names = tuple(names)
    loggers = [logging.getLogger(n) for n in names]
    loggers += [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
                if any(n.startswith(prefix + ".") for prefix in names)]
    for logger in loggers:
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter(every_s))


quiet_repeats([KAFKA_CLIENT_LOG.name])
