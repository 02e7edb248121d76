"""The standby's bookkeeping (rendezvous.routing.standby), pure: what it holds, drops, owes and writes."""

from __future__ import annotations

from rendezvous.kernel.wire import Score
from rendezvous.routing.policy import FixedChain
from rendezvous.routing.router import Router
from rendezvous.routing.standby import Standby

POLICY = FixedChain("p", 1, [("m1", 20), ("m2", None)], sla_ms=100)


def standby(known: set[str] | None = None, keep_ms: float = 30_000.0) -> Standby:
    known = known if known is not None else set()
    return Standby(Router(POLICY, sla_guard_ms=5), knows=known.__contains__, keep_ms=keep_ms)


def score(rid: str, at: float, value: float = 0.5) -> list[Score]:
    return [Score(rid, at, at, at, value)]


def test_what_the_owner_answered_is_never_written():
    s = standby()
    s.on_request("r1", 0, 1000, 1000, None)
    s.on_scores("m1", "1", score("r1", 1005), 1005)
    s.answered(["r1"], 1010)  # the owner's result, read from the results topic
    assert s.held_count == 0 and s.act({0}, 1020) == []
    s.on_request("r2", 0, 1030, 1030, None)
    s.answered(["r2"], 1031)  # answered before the standby decided: never decided
    assert s.on_tick(2000) == [] and s.on_scores("m1", "1", score("r2", 2001), 2001) == []


def test_a_request_the_workers_own_router_knows_is_never_the_standbys():
    s = standby(known={"r1"})
    s.on_request("r1", 0, 1000, 1000, None)
    assert s.on_scores("m1", "1", score("r1", 1005), 1005) == [] and s.held_count == 0
    s.act({0}, 1010)
    s.on_request("r2", 0, 1010, 1010, None)
    assert [d.pending.request_id for d in s.on_scores("m1", "1", score("r2", 1015), 1015)] == ["r2"]


def test_owed_answers_are_written_when_acting_restamped_with_the_takeover_time():
    s = standby()
    s.on_request("r1", 0, 1000, 1000, "replies.g1")
    s.on_request("r2", 1, 1000, 1000, None)
    assert s.on_tick(1095) == [] and s.held_count == 2  # both defaulted at the guarded deadline, held
    [owed] = s.act({0}, 1400)
    assert owed.pending.request_id == "r1" and owed.decided_ms == 1400 and owed.due_ms == 1095
    assert owed.detail.startswith("answered by a standby") and owed.pending.token.reply_to == "replies.g1"
    assert owed.latency_ms == 400  # its record says how late it was
    assert s.held_count == 1  # r2's partition still has its owner


def test_released_partitions_are_held_again_and_old_holds_expire():
    s = standby(keep_ms=1000)
    s.act({0}, 0)
    s.release({0})
    s.on_request("r1", 0, 1000, 1000, None)
    assert s.on_scores("m1", "1", score("r1", 1005), 1005) == [] and s.held_count == 1
    s.on_tick(2004)
    assert s.held_count == 1
    s.on_tick(2006)  # kept 1000 ms after its decision at 1005
    assert s.held_count == 0 and s.act({0}, 2010) == []
