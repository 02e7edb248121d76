"""Workers' links to each other (rendezvous.service.peers), with real processes and real sockets.

A peer in another process is SIGKILLed: its death is seen at once, with the partitions it owned.
SIGSTOPped, it is slow, not dead. A goodbye is not a death. A new owner's release request is
answered by every peer once it has let go.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from rendezvous.service.peers import Peers

# A peer in its own process: id "a" (lower: it dials), owning partitions 0 and 1, releasing on request.
PEER = textwrap.dedent("""\
    import asyncio, sys
    from rendezvous.service.peers import Peers

    async def main():
        released = []
        async def on_release(partitions):
            released.append(sorted(partitions))
            print("released", sorted(partitions), flush=True)
        peers = Peers("a", "127.0.0.1", lambda peer, owns: None, on_release)
        await peers.start()
        peers.announce({0, 1})
        peers.follow("b", "127.0.0.1", int(sys.argv[1]))
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() == "bye":
            await peers.stop()
            print("stopped", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


class Here:
    """Peer "b", in this process, recording what it hears."""

    def __init__(self) -> None:
        self.lost: list[tuple[str, set[int], float]] = []
        self.released: list[set[int]] = []
        self.peers = Peers("b", "127.0.0.1", lambda peer, owns: self.lost.append((peer, owns, time.monotonic())),
                           self._release)

    async def _release(self, partitions: set[int]) -> None:
        self.released.append(partitions)


async def _until(check, what: str, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.002)


@pytest.fixture
def other() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait(10)


async def _linked(started: list[subprocess.Popen]) -> tuple[Here, subprocess.Popen]:
    """Peer "b" here, linked to peer "a" in a process of its own, which said what it owns."""
    here = Here()
    await here.peers.start()
    peer = _start(started, here.peers.port)
    await _until(lambda: here.peers.live() == {"a"} and here.peers.owner_of(1) == "a", "linked")
    return here, peer


def _start(started: list[subprocess.Popen], port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", PEER, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    started.append(process)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def test_a_killed_peer_is_seen_at_once_with_what_it_owned_and_a_stopped_one_is_not(other):
    async def scenario() -> None:
        here, peer = await _linked(other)
        os.kill(peer.pid, signal.SIGSTOP)  # slow, not dead: the socket stays open
        await asyncio.sleep(0.5)  # the fault itself; nothing may be reported during it
        assert here.lost == [] and here.peers.live() == {"a"}
        os.kill(peer.pid, signal.SIGCONT)
        killed = time.monotonic()
        os.kill(peer.pid, signal.SIGKILL)
        await _until(lambda: here.lost, "the killed peer reported lost", timeout=5)
        [(who, owned, seen)] = here.lost
        assert (who, owned) == ("a", {0, 1}) and here.peers.live() == set()
        print(f"death seen {1000 * (seen - killed):.1f} ms after SIGKILL")
        await here.peers.stop()

    asyncio.run(scenario())


def test_a_goodbye_is_not_a_death(other):
    async def scenario() -> None:
        here, peer = await _linked(other)
        assert peer.stdin is not None and peer.stdout is not None
        peer.stdin.write("bye\n")
        peer.stdin.flush()
        await _until(lambda: not here.peers.live(), "the link closed")
        assert here.lost == []
        await here.peers.stop()

    asyncio.run(scenario())


def test_a_new_owner_asks_every_peer_to_let_go_and_waits_for_the_answer(other):
    async def scenario() -> None:
        here, peer = await _linked(other)
        started = time.monotonic()
        await asyncio.wait_for(here.peers.ask_release({2, 3}, timeout_s=5), 10)
        assert time.monotonic() - started < 4, "answered by the timeout, not by the peer"
        assert peer.stdout is not None
        # the peer wrote this line before it answered: it is there already when the ask returns
        assert select.select([peer.stdout], [], [], 0)[0], "the ask returned before the peer let go"
        assert peer.stdout.readline().strip() == "released [2, 3]"
        await here.peers.stop()

    asyncio.run(scenario())
