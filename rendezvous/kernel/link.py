"""Whether this process can reach the broker right now, for its ``/ready``.

A component that cannot reach the broker cannot serve: requests are not read and
answers are not written. Its ``/ready`` must say so, or an orchestrator keeps sending
it traffic and an operator sees green while nothing is answered. A client's own
connection state does not tell: librdkafka closes idle connections and reports all
brokers down for a client that is merely idle. So :class:`BrokerLink` asks: a metadata
request every ``interval_s`` (every ``retry_s`` once one failed), from its own thread
and client, and the broker is reachable while the last one was answered.

>>> link = BrokerLink(KafkaSettings("127.0.0.1:9"))
>>> link.reachable, link.problem()  # before the first probe: assumed reachable (startup checks the broker)
(True, None)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from rendezvous.kernel.settings import KafkaSettings

__all__ = ["BrokerLink"]

log = logging.getLogger(__name__)


class BrokerLink:
    """Probes the broker every ``interval_s`` seconds; :attr:`reachable` is the last probe's answer."""

    def __init__(self, kafka: KafkaSettings, interval_s: float = 3.0, timeout_s: float = 2.0,
                 retry_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        # Every 3 s while the broker answers (a metadata request costs an idle Kafka about 5 ms of
        # CPU: every second from six services was 3% of a core), every second while it does not.
        self.kafka, self.interval_s, self.timeout_s, self.clock = kafka, interval_s, timeout_s, clock
        self.retry_s = retry_s
        self.reachable = True
        self.lost_at: float | None = None  # when the first failed probe of the current outage ended
        self._error = ""
        self._admin: AdminClient | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BrokerLink:
        config = self.kafka.admin()
        config["log_level"] = 0  # an outage is logged once, here, not per reconnect attempt
        self._admin = AdminClient(config)
        self._thread = threading.Thread(target=self._run, name="broker-link", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1)

    def problem(self) -> str | None:
        """Why the broker counts as unreachable, or None."""
        if self.reachable:
            return None
        since = self.clock() - self.lost_at if self.lost_at is not None else 0.0
        return f"the broker at {self.kafka.bootstrap} has not answered for {since:.0f}s ({self._error})"

    def probe(self) -> bool:
        """One metadata request; updates :attr:`reachable` and logs each change once."""
        assert self._admin is not None, "start() first"
        try:
            self._admin.list_topics(timeout=self.timeout_s)
            ok, error = True, ""
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            ok, error = False, err.str() if hasattr(err, "str") else str(err)
        if ok and not self.reachable:
            log.warning("the broker at %s answers again after %.1fs", self.kafka.bootstrap,
                        self.clock() - (self.lost_at or self.clock()))
        elif not ok and self.reachable:
            self.lost_at = self.clock()
            log.warning("the broker at %s does not answer (%s): not ready until it does", self.kafka.bootstrap, error)
        self.reachable, self._error = ok, error
        return ok

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s if self.reachable else self.retry_s):
            self.probe()
