"""The rendezvous's bounded memory: requests awaiting an answer, scores that came
before their request, and recently decided request ids.

Everything here expires: a pending request is decided by its SLA at the latest,
an orphan score is dropped after ``orphan_ttl_ms``, and a decided id is forgotten
after ``decided_ttl_ms`` (or when ``decided_max`` is exceeded). Tokens are opaque
handles the adapter uses to acknowledge the Kafka records behind each item.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from rendezvous.routing.plan import Plan

__all__ = ["ScoreView", "PendingRequest", "DeadlineQueue", "OrphanScore", "OrphanScores", "DecidedRequests"]


@dataclass(slots=True)
class ScoreView:
    """A model's answer as the rendezvous keeps it."""

    model_version: str
    score: float | None
    error: str | None
    arrived_ms: float  # when the rendezvous received it (epoch ms)
    finished_ms: float  # when the model finished it (epoch ms, the runner's clock)


@dataclass(slots=True, eq=False)
class PendingRequest:
    """A request waiting for its answer."""

    request_id: str
    partition: int
    t0: float  # epoch ms the SLA is measured from
    plan: Plan
    token: Any
    event_time: float | None = None
    seen_ms: float = 0.0  # when the rendezvous first saw the request (epoch ms)
    scores: dict[str, ScoreView] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    score_tokens: list[Any] = field(default_factory=list)
    wake_ms: float = 0.0
    decided: bool = False


class DeadlineQueue:
    """Pending requests ordered by when each must next be looked at."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, PendingRequest]] = []
        self._seq = 0

    def push(self, pending: PendingRequest, wake_ms: float) -> None:
        pending.wake_ms = wake_ms
        self._seq += 1
        heapq.heappush(self._heap, (wake_ms, self._seq, pending))

    def pop_due(self, now_ms: float) -> list[tuple[float, PendingRequest]]:
        """Live requests whose wake time has come, with that time (stale heap entries are skipped)."""
        due: list[tuple[float, PendingRequest]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            wake, _, pending = heapq.heappop(heap)
            if not pending.decided and pending.wake_ms == wake:
                pending.wake_ms = 0.0  # no live entry now: the next evaluation must push one
                due.append((wake, pending))
        return due

    def next_ms(self) -> float | None:
        heap = self._heap
        while heap and (heap[0][2].decided or heap[0][2].wake_ms != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(slots=True)
class OrphanScore:
    model: str
    view: ScoreView
    token: Any


class OrphanScores:
    """Scores whose request has not been seen yet (the runners can be ahead of us)."""

    def __init__(self, ttl_ms: float, max_scores: int) -> None:
        self.ttl_ms, self.max_scores = ttl_ms, max_scores
        self._by_request: OrderedDict[str, tuple[float, list[OrphanScore]]] = OrderedDict()
        self._count = 0

    def add(self, request_id: str, orphan: OrphanScore, now_ms: float) -> list[OrphanScore]:
        """Keep ``orphan``; return any orphans evicted to stay within bounds."""
        entry = self._by_request.get(request_id)
        if entry is None:
            self._by_request[request_id] = (now_ms, [orphan])
        else:
            entry[1].append(orphan)
        self._count += 1
        evicted: list[OrphanScore] = []
        while self._count > self.max_scores:
            evicted.extend(self._pop_oldest())
        return evicted

    def take(self, request_id: str) -> list[OrphanScore]:
        entry = self._by_request.pop(request_id, None)
        if entry is None:
            return []
        self._count -= len(entry[1])
        return entry[1]

    def expire(self, now_ms: float) -> list[OrphanScore]:
        expired: list[OrphanScore] = []
        while self._by_request:
            first_seen, _ = next(iter(self._by_request.values()))
            if now_ms - first_seen < self.ttl_ms:
                break
            expired.extend(self._pop_oldest())
        return expired

    def drain(self) -> list[OrphanScore]:
        everything = [o for _, orphans in self._by_request.values() for o in orphans]
        self._by_request.clear()
        self._count = 0
        return everything

    def _pop_oldest(self) -> list[OrphanScore]:
        _, (_, orphans) = self._by_request.popitem(last=False)
        self._count -= len(orphans)
        return orphans

    def __len__(self) -> int:
        return self._count


class DecidedRequests:
    """Recently answered request ids, and which models had scored each one.

    Lets the router tell a late score (its model had not answered in time) from a
    duplicate (it had), and answer a re-delivered request never a second time.
    """

    def __init__(self, ttl_ms: float, max_entries: int) -> None:
        self.ttl_ms, self.max_entries = ttl_ms, max_entries
        self._entries: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()

    def add(self, request_id: str, models: frozenset[str], now_ms: float) -> None:
        self._entries[request_id] = (now_ms, models)
        self._entries.move_to_end(request_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, request_id: str) -> frozenset[str] | None:
        entry = self._entries.get(request_id)
        return entry[1] if entry else None

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._entries

    def expire(self, now_ms: float) -> None:
        entries = self._entries
        while entries:
            decided_ms, _ = next(iter(entries.values()))
            if now_ms - decided_ms < self.ttl_ms:
                break
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
