"""A worker's standby for partitions it does not own: decided in the shadows, written only when owed.

Every worker reads every partition's requests and scores a second time and decides
them with a router of its own, as their owner does. Those decisions are *held*:
dropped as soon as the owner's result is seen (or after ``keep_ms``). When the
owner of a partition is lost (its link dropped: killed, not merely slow) or gives
the partition up in a rebalance, the standby *acts* on it: it writes what it
holds and what it decides from then on, until the partition's next owner asks it
to let go. So a dead worker's requests are answered within milliseconds, not
after the group's session timeout and a rebalance; that is the failover.

``knows(request_id)`` tells whether this worker's own router has the request
(pending or answered): those are its to answer, never the standby's.

>>> from rendezvous.routing.policy import FixedChain
>>> from rendezvous.routing.router import Router
>>> from rendezvous.kernel.wire import Score
>>> standby = Standby(Router(FixedChain("demo", 1, [("m1", None)], sla_ms=100)), knows=lambda r: False)
>>> standby.on_request("r1", partition=0, record_ms=1000, now_ms=1001, reply_to=None)
[]
>>> standby.on_scores("m1", "v1", [Score("r1", 1002, 1002, 1003, score=0.9)], now_ms=1004)
[]
>>> standby.held_count  # decided, held: partition 0's owner answers it
1
>>> [(d.pending.request_id, d.choice.model, d.decided_ms) for d in standby.act({0}, now_ms=1030)]
[('r1', 'm1', 1030)]
>>> standby.on_request("r2", partition=0, record_ms=1040, now_ms=1040, reply_to=None)  # acting: nothing waits
[]
>>> [d.pending.request_id for d in standby.on_scores("m1", "v1", [Score("r2", 1041, 1041, 1042, 0.5)], 1043)]
['r2']
>>> standby.release({0}); standby.acting
set()
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import replace

from rendezvous.kernel.wire import Score
from rendezvous.routing.router import Decision, Router, Step

__all__ = ["Standby", "Unheld"]


class Unheld:
    """The token of a record the standby read: nothing to acknowledge (it is not in a consumer group),
    and the reply topic a gateway named, so a caller gets its answer from the standby too."""

    __slots__ = ("reply_to",)

    def __init__(self, reply_to: str | None = None) -> None:
        self.reply_to = reply_to

    def release(self) -> None:
        pass


_UNHELD = Unheld()


class Standby:
    """Decisions for other workers' partitions: held until owed, written while acting."""

    def __init__(self, router: Router, knows: Callable[[str], bool], keep_ms: float = 30_000.0,
                 answered_ttl_ms: float = 60_000.0) -> None:
        self.router, self.knows, self.keep_ms, self.answered_ttl_ms = router, knows, keep_ms, answered_ttl_ms
        self.acting: set[int] = set()
        self._held: OrderedDict[str, Decision] = OrderedDict()  # decided, not written: the owner answers them
        self._answered: OrderedDict[str, float] = OrderedDict()  # ids whose result is seen, when
        self.written = 0  # decisions this standby owed and wrote

    @property
    def held_count(self) -> int:
        return len(self._held)

    # ------------------------------------------------------------------ what the standby reads

    def on_request(self, request_id: str, partition: int, record_ms: float, now_ms: float,
                   reply_to: str | None, event_time: float | None = None) -> list[Decision]:
        token = _UNHELD if reply_to is None else Unheld(reply_to)
        return self._sort(self.router.on_request(request_id, partition, record_ms, token, now_ms, event_time), now_ms)

    def on_scores(self, model: str, model_version: str, scores: Iterable[Score], now_ms: float) -> list[Decision]:
        return self._sort(self.router.on_scores(model, model_version, scores, _UNHELD, now_ms), now_ms)

    def on_tick(self, now_ms: float) -> list[Decision]:
        self._expire(now_ms)
        return self._sort(self.router.on_tick(now_ms), now_ms)

    def answered(self, request_ids: Iterable[str], now_ms: float) -> None:
        """Results seen on the results topic, or written by this worker: nothing owed for them."""
        for request_id in request_ids:
            self._held.pop(request_id, None)
            self._answered[request_id] = now_ms
            self._answered.move_to_end(request_id)
            self.router.forget((request_id,), now_ms)  # no deadline work for what is answered

    # ------------------------------------------------------------------ acting

    def act(self, partitions: set[int], now_ms: float) -> list[Decision]:
        """Cover ``partitions`` of a lost owner from now on; returns their held decisions, to write now.

        Call it once every result written to them before now has been read (see :meth:`answered`).
        A held decision is re-stamped: it is taken now, and its latency says so.
        """
        self.acting |= partitions
        owed = [d for d in self._held.values() if d.pending.partition in partitions]
        for d in owed:
            del self._held[d.pending.request_id]
        out = [replace(d, decided_ms=max(d.decided_ms, now_ms),
                       detail=f"answered by a standby (its owner lost or handing over): {d.detail}")
               for d in owed if not self._taken(d.pending.request_id)]
        self.written += len(out)
        return out

    def cover(self, partitions: set[int]) -> None:
        """Write what is decided for ``partitions`` from now on, leaving what is held: for a handover, where
        their requests that nobody answered are read again by the next owner (which decides them with
        their scores read again, as a restart does), not for an owner lost with its answers."""
        self.acting |= partitions

    def release(self, partitions: set[int]) -> None:
        """Stop covering ``partitions``: their new owner answers them."""
        self.acting -= partitions

    # ------------------------------------------------------------------ internals

    def _taken(self, request_id: str) -> bool:
        return request_id in self._answered or self.knows(request_id)

    def _sort(self, step: Step, now_ms: float) -> list[Decision]:
        out = []
        for d in step.decisions:
            request_id = d.pending.request_id
            if self._taken(request_id):
                continue
            if d.pending.partition in self.acting:
                out.append(d)
                self.written += 1
            else:
                self._held[request_id] = d
        return out

    def _expire(self, now_ms: float) -> None:
        held = self._held
        while held:
            first = next(iter(held.values()))
            if now_ms - first.decided_ms < self.keep_ms:
                break
            held.popitem(last=False)
        answered = self._answered
        while answered:
            at = next(iter(answered.values()))
            if now_ms - at < self.answered_ttl_ms:
                break
            answered.popitem(last=False)
