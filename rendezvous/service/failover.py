"""Failover inside the SLA: a worker covers the partitions of a peer that died, and its own during a rebalance.

The parts: :class:`~rendezvous.service.shadow.ShadowReader` reads every
partition's requests, scores and results; :class:`~rendezvous.routing.standby.Standby`
decides them and holds what it decided; :class:`~rendezvous.service.peers.Peers`
says who owns what and who just died. This module wires them to the worker:

- a peer lost (its link dropped): once every result written so far is read, the
  live worker with the lowest id writes what the standby held for the peer's
  partitions and covers them until their next owner asks it to let go;
- a rebalance takes this worker's partitions: it covers them itself (it owned them,
  so no one else does) until they are assigned again;
- partitions assigned: every peer is asked to let them go and flush what it wrote,
  and so is this worker's own standby, before recovery reads what was answered.

Nothing is answered twice: the standby never writes a request this worker's router
knows, or one whose result it has read, and a partition's new owner reads its
results only after every standby has flushed its writes and let go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from rendezvous.kernel.clock import Clock
from rendezvous.kernel.kafka import KafkaClients
from rendezvous.kernel.presence import Presence, decode_presence, read_presence, service_url
from rendezvous.kernel.trust import score_refusal
from rendezvous.kernel.wire import WireError, decode_request_head, decode_score_batch
from rendezvous.routing.router import Decision, Router
from rendezvous.routing.standby import Standby
from rendezvous.service.peers import Peers
from rendezvous.service.settings import ServiceSettings
from rendezvous.service.shadow import ShadowReader
from rendezvous.service.writer import ResultWriter

__all__ = ["Failover"]

log = logging.getLogger("rendezvous.standby")

RELEASE_TIMEOUT_S = 2.0


class Failover:
    """The standby of one worker. ``write(decisions)`` writes what it must answer (the worker's writer)."""

    def __init__(self, settings: ServiceSettings, router: Router, writer: ResultWriter,
                 write: Callable[[list[Decision]], None], owned: Callable[[], set[int]],
                 clients: KafkaClients, clock: Clock,
                 on_presence: Callable[[list[Presence]], None] = lambda present: None) -> None:
        self.settings, self.writer, self._write, self._owned, self.clock = settings, writer, write, owned, clock
        self._on_presence = on_presence
        self.main = router
        self.standby = Standby(Router(router.policy, settings.limits, settings.sla_guard_ms), knows=router.knows)
        self.peers = Peers(settings.worker_id, settings.web_host, self._lost, self._release, self._peer_owns)
        self.shadow: ShadowReader | None = None
        self._clients = clients
        self._takeovers: list[tuple[int, set[int], str]] = []  # (catch-up ticket, partitions, whose)
        self._lost_cover: set[int] = set()  # partitions covered for a lost peer: until a live owner says so
        self.takeovers: list[str] = []  # for /stats
        self._started = asyncio.Event()

    async def start(self) -> None:
        """Listen for peers, start reading, and link to the peers announced so far: before this worker's
        first assignment (which waits for it), so that it asks them to let its partitions go."""
        try:
            await self.peers.start()
            s = self.settings
            loop = asyncio.get_running_loop()
            self.shadow = await loop.run_in_executor(
                None, lambda: ShadowReader(s.kafka, s.topics, s.app_id, self._clients).start())
            present = await loop.run_in_executor(None, lambda: read_presence(s.kafka, s.topics))
            self._follow(present, self.clock())
        finally:
            self._started.set()

    async def stop(self) -> None:
        """Before the worker leaves its group: it covers nothing from now on (its partitions' next owners
        answer them), and its peers hear a goodbye, not a death."""
        shadow, self.shadow = self.shadow, None
        self.standby.release(set(self.standby.acting))
        await self.peers.stop()
        if shadow is not None:
            shadow.stop()

    def status(self) -> dict[str, Any]:
        return {"acting": sorted(self.standby.acting), "held": self.standby.held_count,
                "written": self.standby.written, "peers": sorted(self.peers.live()), "lost": self.peers.lost,
                "takeovers": self.takeovers[-10:]}

    def urls(self) -> dict[str, str]:
        # a wildcard address names this host: peers on other machines dial it
        return {"peer": service_url(self.settings.web_host, self.peers.port, "tcp")} if self.peers.port else {}

    # ------------------------------------------------------------------ each housekeeping round

    def round(self, now: float) -> None:
        standby = self.standby
        if standby.router.policy is not self.main.policy:
            standby.router.set_policy(self.main.policy)
        if self.shadow is None:
            return
        caught_up = self.shadow.caught_up  # first: what the catch-up read is in this drain, not the next
        records = self.shadow.drain()
        if records.presence:
            self._follow([decode for m in records.presence if m.value() and (decode := _presence(m.value()))], now)
        if records.results:
            standby.answered([m.key().decode(errors="replace") for m in records.results if m.key()], now)
        out: list[Decision] = []
        for m in records.requests:
            reply_to, _, probe = self.settings.topics.reply_route(m.headers())
            if probe:
                continue  # a gateway asking whether a worker answers: the owner says so
            try:
                head = decode_request_head(m.value(), self.settings.max_request_bytes)
            except WireError:
                continue  # its owner dead-letters it
            record_ms = float(m.timestamp()[1]) or now
            out += standby.on_request(head.request_id, m.partition(), record_ms, now, reply_to, head.event_time)
        for m in records.scores:
            try:
                batch = decode_score_batch(m.value())
            except WireError:
                continue
            if score_refusal(self.settings.secret, batch.model, m.value(), m.headers()) is not None:
                continue  # forged: its owner dead-letters it
            out += standby.on_scores(batch.model, batch.model_version, batch.scores, now)
        out += standby.on_tick(now)
        for ticket, partitions, whose in [t for t in self._takeovers if t[0] <= caught_up]:
            self._takeovers.remove((ticket, partitions, whose))
            taken = partitions - self._owned()
            owed = standby.act(taken, now)
            self._lost_cover |= taken
            self.takeovers.append(f"{whose}: partitions {sorted(taken)}, {len(owed)} owed answers")
            log.warning("covering partitions %s of lost peer %s: %d answers it owed", sorted(taken), whose, len(owed))
            out += owed
        if out:
            self._write(out)

    # ------------------------------------------------------------------ partitions

    async def revoked(self, partitions: set[int], now: float) -> None:
        """A rebalance took these: cover them (no one else does) until they are assigned again. What is
        held stays held: their next owner re-reads what this worker had not answered."""
        if partitions and self.shadow is not None:
            self.standby.cover(partitions)

    async def assigned(self, owned: set[int], new: set[int]) -> None:
        """A rebalance ended: this worker owns ``owned``, of which ``new`` since the last one.

        Every partition covered since the rebalance began has an owner now: let go of all but the new
        ones (covered until their recovery is done, see :meth:`recovered`) and those of a lost peer that
        no live worker owns yet (the group may still count the dead). Every peer covering a new one lets
        go and flushes; once their results are read, this worker's standby covers the new ones while
        recovery reads what was answered, so no partition waits for its recovery."""
        await asyncio.wait_for(self._started.wait(), 2 * RELEASE_TIMEOUT_S + 10)  # start() began with the worker
        self.peers.announce(owned)
        keep = self._lost_cover - owned - {p for p in self._lost_cover if self.peers.owner_of(p)}
        self._lost_cover = keep
        await self._release(self.standby.acting - keep - new)
        if not new or self.shadow is None:
            return
        await self.peers.wait_linked(RELEASE_TIMEOUT_S / 2)
        await self.peers.ask_release(new, RELEASE_TIMEOUT_S)
        ticket = self.shadow.catch_up()  # every result the peers wrote to them, read before covering
        deadline = self.clock() + 1000.0 * RELEASE_TIMEOUT_S
        while self.shadow.caught_up < ticket and self.clock() < deadline:
            await asyncio.sleep(0.002)
        self.round(self.clock())  # takes in what the catch-up read
        self.standby.cover(new)

    def recovered(self, partitions: set[int]) -> None:
        """Recovery of ``partitions`` is done: this worker's router answers them from now on (what the
        standby answered meanwhile is marked answered there, see the worker's ``_write_standby``)."""
        self._lost_cover -= partitions
        self.standby.release(partitions)

    def _peer_owns(self, peer: str, owns: set[int]) -> None:
        covered = owns & self.standby.acting
        if covered:
            self._lost_cover -= covered
            self.standby.release(covered)  # its owner answers them now (it asked, or will ask, for a flush)

    async def _release(self, partitions: set[int]) -> None:
        if partitions:
            self.standby.release(partitions)
        await self._flush()

    async def _flush(self) -> None:
        deadline = self.clock() + 1000.0 * RELEASE_TIMEOUT_S
        while len(self.writer) and self.clock() < deadline:  # what it wrote is durable before anyone reads results
            self.writer.poll()
            await asyncio.sleep(0.002)

    # ------------------------------------------------------------------ peers

    def _lost(self, peer: str, partitions: set[int]) -> None:
        live = self.peers.live() | {self.settings.worker_id}
        if min(live) != self.settings.worker_id or not partitions or self.shadow is None:
            return  # another live worker covers them
        self._takeovers.append((self.shadow.catch_up(), set(partitions), peer))

    def _follow(self, present: list[Presence], now: float) -> None:
        self._on_presence(present)
        for p in present:
            url = p.urls.get("peer")
            if p.role != "rendezvous" or p.name != self.settings.app_id or not url or not p.alive(now):
                continue
            host, _, port = url.removeprefix("tcp://").rpartition(":")
            self.peers.follow(p.instance, host.strip("[]"), int(port))


def _presence(value: bytes) -> Presence | None:
    try:
        return decode_presence(value)
    except Exception:  # noqa: BLE001 - a stranger's record on the presence topic
        return None

