"""The workers of one deployment, linked to each other: who owns what, and who just died.

The consumer group learns that a worker died only when its session times out
(seconds), and then stops every partition for a rebalance. A TCP connection
learns it at once: the kernel closes a killed process's sockets. So every worker
listens on a port (announced in its presence record) and keeps a connection to
each other worker it finds there. Over it each says which partitions it owns,
whenever that changes. A connection that ends without a goodbye is a lost peer:
``on_lost(peer, partitions)`` is called with what it owned. A stopped (SIGSTOP)
process keeps its sockets: it is slow, not lost, and the group decides.

A new owner of partitions asks every peer to let them go (``ask_release``) before
it reads what was already answered: a standby covering them stops, flushes what it
wrote, and says so (``on_release``).

Messages are JSON lines: ``{"hello": id, "owns": [..]}``, ``{"owns": [..]}``,
``{"release": [..], "ask": n}``, ``{"released": n}``, ``{"bye": true}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Peers"]

log = logging.getLogger("rendezvous.peers")


@dataclass
class _Link:
    peer: str
    writer: asyncio.StreamWriter
    owns: set[int] = field(default_factory=set)
    said_bye: bool = False


class Peers:
    """Links to the other workers of one group (``me`` is this worker's id)."""

    def __init__(self, me: str, host: str, on_lost: Callable[[str, set[int]], None],
                 on_release: Callable[[set[int]], Awaitable[None]],
                 on_owns: Callable[[str, set[int]], None] = lambda peer, owns: None) -> None:
        self.me, self.host, self._on_lost, self._on_release, self._on_owns = me, host, on_lost, on_release, on_owns
        self.port = 0
        self.owned: set[int] = set()
        self._links: dict[str, _Link] = {}  # by peer id: one live link each (whichever side opened it)
        self._dialing: set[str] = set()
        self._known: set[str] = set()  # peers announced on the presence topic and reachable so far
        self._asks: dict[int, tuple[asyncio.Future[None], set[str]]] = {}
        self._next_ask = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.lost: list[str] = []  # peers lost so far, for /stats

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accepted, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        for link in list(self._links.values()):
            self._send(link, {"bye": True})
            with contextlib.suppress(OSError):
                link.writer.close()
        self._links.clear()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    def live(self) -> set[str]:
        """The peers linked now."""
        return set(self._links)

    def owner_of(self, partition: int) -> str | None:
        return next((p for p, link in self._links.items() if partition in link.owns), None)

    # ------------------------------------------------------------------ finding peers

    def follow(self, peer: str, host: str, port: int) -> None:
        """A peer announced where it listens: link to it unless linked already.

        Only the lower id dials, so a pair has one link: with two, closing the spare one would
        look like a death to the side that kept it. The higher id waits to be dialled."""
        if peer == self.me or peer in self._links or peer in self._dialing:
            return
        self._known.add(peer)
        if self.me > peer:
            return
        self._dialing.add(peer)
        self._spawn(self._dial(peer, host, port))

    async def _dial(self, peer: str, host: str, port: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
        except (OSError, TimeoutError) as exc:
            log.debug("cannot reach peer %s at %s:%d: %s", peer, host, port, exc)
            self._known.discard(peer)  # a stale record (it died): not waited for
            self._dialing.discard(peer)
            return
        self._dialing.discard(peer)
        await self._serve(reader, writer)

    async def wait_linked(self, timeout_s: float) -> None:
        """Until every peer announced so far is linked (or found unreachable), at most ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._known - set(self._links)) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        unlinked = self._known - set(self._links)
        if unlinked:  # announced, never linked: gone (a record not yet aged out), not waited for again
            log.info("peers %s announced but not linked within %.1fs", sorted(unlinked), timeout_s)
            self._known -= unlinked

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer)

    # ------------------------------------------------------------------ ownership

    def announce(self, owned: set[int]) -> None:
        self.owned = set(owned)
        for link in self._links.values():
            self._send(link, {"owns": sorted(owned)})

    async def ask_release(self, partitions: set[int], timeout_s: float = 2.0) -> None:
        """Ask every peer to stop covering ``partitions``; returns when all said so, were lost, or ``timeout_s``."""
        if not self._links or not partitions:
            return
        self._next_ask += 1
        ask = self._next_ask
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asks[ask] = (done, set(self._links))
        for link in list(self._links.values()):
            self._send(link, {"release": sorted(partitions), "ask": ask})
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            log.warning("peers %s did not release partitions %s within %.1fs", sorted(self._asks[ask][1]),
                        sorted(partitions), timeout_s)
        finally:
            self._asks.pop(ask, None)

    def _answered(self, ask: int, peer: str) -> None:
        entry = self._asks.get(ask)
        if entry is None:
            return
        done, waiting = entry
        waiting.discard(peer)
        if not waiting and not done.done():
            done.set_result(None)

    # ------------------------------------------------------------------ one link

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps({"hello": self.me, "owns": sorted(self.owned)}).encode() + b"\n")
        link: _Link | None = None
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                message = json.loads(line)
                if "hello" in message:
                    peer = str(message["hello"])
                    if peer in self._links:  # a second link from one peer (it restarted with the same id)
                        self._links.pop(peer).said_bye = True  # the old one is over, not lost
                    link = self._links[peer] = _Link(peer, writer, set(message.get("owns", [])))
                    self._known.add(peer)
                    log.info("linked to peer %s", peer)
                    self._on_owns(peer, link.owns)
                elif link is None:
                    return
                elif "owns" in message:
                    link.owns = set(message["owns"])
                    self._on_owns(link.peer, link.owns)
                elif "release" in message:
                    await self._on_release(set(message["release"]))
                    self._send(link, {"released": message["ask"]})
                elif "released" in message:
                    self._answered(int(message["released"]), link.peer)
                elif message.get("bye"):
                    link.said_bye = True
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            log.debug("link to %s ended: %s", link.peer if link else "a peer", exc)
        finally:
            with contextlib.suppress(OSError):
                writer.close()
            if link is not None and self._links.get(link.peer) is link:
                del self._links[link.peer]
                self._known.discard(link.peer)
                for ask in list(self._asks):
                    self._answered(ask, link.peer)
                if not link.said_bye:
                    self.lost.append(link.peer)
                    log.warning("peer %s lost (its link dropped); it owned partitions %s", link.peer, sorted(link.owns))
                    self._on_lost(link.peer, link.owns)

    def _send(self, link: _Link, message: dict[str, Any]) -> None:
        try:
            link.writer.write(json.dumps(message).encode() + b"\n")
        except (OSError, RuntimeError):
            pass  # the reading side notices and reports the link lost

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
