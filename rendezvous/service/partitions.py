"""Which requests partitions a worker owns, and what it does when one arrives or leaves.

A newly assigned partition is *recovering* until :mod:`~rendezvous.service.recovery`
has read what its previous owner already answered: Faust may deliver its records
before that, so they wait here, in order, and are handled once recovery is done
(or dropped if the partition is revoked meanwhile: its next owner re-reads them).
A partition whose scores were not all read at takeover is *held* in the router
until the scores consumer reaches the offset recovery noted (or a timeout), so
re-read requests are decided with their re-read scores. A partition whose log is
new (its committed offset is past its end, or its commit names another topic id)
is read again from its start through ``rewind``: what Faust delivered of it
meanwhile comes again. Then the topic ids found at takeover are handed to
``logs_read``, for the worker's commits to carry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rendezvous.kernel.clock import Clock
from rendezvous.kernel.kafka import KafkaClients
from rendezvous.routing.router import Router, Step
from rendezvous.service.control_plane import ControlPlane
from rendezvous.service.failover import Failover
from rendezvous.service.recovery import recover_partitions
from rendezvous.service.settings import ServiceSettings

__all__ = ["Partitions"]

log = logging.getLogger("rendezvous.service")

Handler = Callable[[Any], None]
Rewind = Callable[[str, int, int], Awaitable[None]]  # (topic, partition, offset): the stream reads it from there
LogsRead = Callable[[dict[str, str]], None]  # topic -> the id of the log now read from it


class Partitions:
    """Assignment, revocation and recovery of one worker's requests partitions.

    ``apply`` carries out what the router decided (the worker's ``_apply``);
    ``call_later(delay_s, fn, *args)`` schedules on the worker's loop; ``rewind`` moves
    the worker's stream back to the start of a new log; ``logs_read`` learns the topic
    ids the worker's commits must carry.
    """

    def __init__(self, settings: ServiceSettings, router: Router, control: ControlPlane,
                 apply: Callable[[Step], None], call_later: Callable[..., Any], clients: KafkaClients, clock: Clock,
                 failover: Failover | None = None, rewind: Rewind | None = None, logs_read: LogsRead | None = None) -> None:
        self.settings, self.router, self.control, self.failover, self.rewind = settings, router, control, failover, rewind
        self.logs_read = logs_read
        self._apply, self._call_later, self.clients, self.clock = apply, call_later, clients, clock
        self.owned: set[int] = set()
        self.catch_up: dict[int, int] = {}  # held partition -> scores offset to reach
        self._recovering: dict[int, list[tuple[Handler, Any]]] = {}

    def wait_for_recovery(self, partition: int, handle: Handler, event: Any) -> bool:
        """True if ``partition`` is recovering: the event is kept and handled afterwards."""
        waiting = self._recovering.get(partition)
        if waiting is None:
            return False
        waiting.append((handle, event))
        return True

    async def assigned(self, partitions: set[int]) -> None:
        """The requests partitions this worker now owns (Faust's assignment, all of it)."""
        new = partitions - self.owned
        self.owned = set(partitions)
        for p in new:
            self._recovering.setdefault(p, [])
        if self.failover is not None:  # every standby covering them lets go and flushes first
            await self.failover.assigned(self.owned, new)
        if not new:
            return
        s = self.settings
        recovered = await asyncio.get_running_loop().run_in_executor(
            None, lambda: recover_partitions(s.kafka, s.topics, s.app_id, new, s.recovery_lookback_ms,
                                             s.outcome_rebuild_s, clients=self.clients, clock=self.clock))
        for p, rec in recovered.items():
            for topic, offset in rec.rewind.items():
                log.warning("partition %d of %s: the log is new (the broker lost its data, or the topic was made "
                            "again), not the one the group's offset was committed in: reading it again from offset %d",
                            p, topic, offset)
                if self.rewind is not None:
                    await self.rewind(topic, p, offset)
                if topic == s.topics.requests and p in self._recovering:
                    self._recovering[p] = []  # they come again from the rewound stream
            if self.logs_read is not None:  # after the rewind: no offset of the old log is committed as the new one's
                self.logs_read(rec.log_ids)
            self.router.mark_answered(rec.answered, self.clock())
            self.control.reindex(rec.results)
            if rec.needs_catch_up:
                self.router.hold(p)
                self.catch_up[p] = rec.scores_target
                self._call_later(s.catch_up_timeout_s, self.release, p, "catch-up timed out")
            log.info("partition %d: re-reading requests %d..%d, %d already answered, scores %d..%d",
                     p, rec.replay_from, rec.replay_to, len(rec.answered), rec.scores_from, rec.scores_target)
            if self.failover is not None:
                self.failover.recovered({p})
            for handle, event in self._recovering.pop(p, []):
                if p in self.owned:  # not revoked meanwhile (its next owner re-reads them)
                    handle(event)

    def revoked(self, partitions: set[int]) -> None:
        for p in partitions:
            self.owned.discard(p)
            self._recovering.pop(p, None)
            self.release(p, "revoked")

    def scores_read(self, partition: int, offset: int) -> None:
        """The scores consumer has read ``offset`` of ``partition``: a held partition may be released."""
        target = self.catch_up.get(partition)
        if target is not None and offset >= target - 1:
            self.release(partition, "scores caught up")

    def release(self, partition: int, why: str) -> None:
        """Decide a held partition's re-read requests from now on."""
        if self.catch_up.pop(partition, None) is not None:
            log.info("partition %d: deciding re-read requests (%s)", partition, why)
            self._apply(self.router.release(partition, self.clock()))

    def release_all(self, why: str) -> None:
        for p in list(self.catch_up):
            self.release(p, why)
