"""The rendezvous worker: Faust adapters around the pure :class:`~rendezvous.routing.router.Router`.

- an agent reads the requests topic; bad records go to the dead-letter topic;
- an agent reads the scores topic (batched records);
- a timer fires at the router's next deadline; a housekeeping task serves
  delivery reports and expires old state every few milliseconds;
- partitions (:mod:`~rendezvous.service.partitions`) are assigned, recovered and revoked.

Records are acknowledged (hence committed) only when their work is durable: see
:mod:`rendezvous.service.writer`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.exceptions import NotReady
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from canary.drift import DriftSettings
from canary.watch import CanaryWatch
from rendezvous.kernel.client_config import describe
from rendezvous.kernel.clock import Clock, now_ms
from rendezvous.kernel.kafka import CONFLUENT, KafkaClients
from rendezvous.kernel.lifecycle import StopDeadline
from rendezvous.kernel.link import BrokerLink
from rendezvous.kernel.presence import service_url
from rendezvous.kernel.trust import score_refusal
from rendezvous.kernel.wire import (
    RecordTooLarge,
    WireError,
    decode_request_head,
    decode_score_batch,
)
from rendezvous.routing.router import Decision, Router, Step
from rendezvous.service.app import create_app
from rendezvous.service.control import ControlFeed
from rendezvous.service.control_plane import ControlPlane
from rendezvous.service.failover import Failover
from rendezvous.service.metrics import MetricSources, ServiceMetrics
from rendezvous.service.partitions import Partitions
from rendezvous.service.policies import PolicyStore
from rendezvous.service.running import RunningModels
from rendezvous.service.settings import ServiceSettings
from rendezvous.service.writer import Ack, ResultWriter

__all__ = ["HOUSEKEEPING_S", "RendezvousWorker"]

log = logging.getLogger("rendezvous.service")

HOUSEKEEPING_S = 0.005


class RendezvousWorker:
    """One worker process. Build it, then run ``faust.Worker(worker.app)``."""

    def __init__(self, settings: ServiceSettings, store: PolicyStore, feed: ControlFeed,
                 clients: KafkaClients = CONFLUENT, clock: Clock = now_ms) -> None:
        self.settings, self.clients, self.clock = settings, clients, clock
        self.topics = settings.topics
        self.router = Router(store.compiled, settings.limits, settings.sla_guard_ms)
        self.metrics = ServiceMetrics()
        self.writer = ResultWriter(settings.kafka, settings.topics, settings.worker_id, self._fatal,
                                   self.metrics.observe_written, clients, clock)
        self.control = ControlPlane(settings, store, feed, self.router, self.writer, self._fatal, clients)
        self.app = create_app(settings.app_id, settings.kafka, settings.web_host, settings.web_port)
        self.metrics.attach(MetricSources(self.router, store, self.control.crediting.quality, self.writer.deadletters,
                                          self.consumer_lag, lambda: self.canary), clock)
        self.canary: CanaryWatch | None = None
        self.ignored_reply_to = 0  # requests whose reply-to header named no replies topic of ours
        self.forged_scores = 0  # score records refused: not signed with their model's key
        self.probes_answered = 0  # gateways' readiness probes: answered at once, not traffic
        self._canary_key: tuple | None = None
        self._canary_policy: Any = None
        self._watch_canary()
        self.ready = False
        self.link = BrokerLink(settings.kafka)  # /ready is false while the broker does not answer
        self.stop_deadline = StopDeadline(settings.stop_grace_s, f"rendezvous worker {settings.worker_id}")
        self.running_models = RunningModels(clock)
        self.control.running_models = self.running_models.names
        self.failover = Failover(settings, self.router, self.writer, self._write_standby, lambda: self.owned,
                                 clients, clock, self.running_models.presence) if settings.standby else None
        self.partitions = Partitions(settings, self.router, self.control, self._apply,
                                     lambda delay_s, *args: self.app.loop.call_later(delay_s, *args), clients, clock,
                                     self.failover, self._rewind, self.app.log_ids.update)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.fatal_error: str | None = None
        self._wire_app()

    # ------------------------------------------------------------------ wiring

    def _wire_app(self) -> None:
        app = self.app
        requests = app.topic(self.topics.requests, key_type=bytes, value_type=bytes)
        scores = app.topic(self.topics.scores, key_type=bytes, value_type=bytes)
        outcomes = app.topic(self.topics.outcomes, key_type=bytes, value_type=bytes)

        async def read_requests(stream: Any) -> None:
            stream.enable_acks = False  # acknowledged when the result is durable
            async for event in stream.events():
                self.on_request_event(event)

        async def read_scores(stream: Any) -> None:
            stream.enable_acks = False  # acknowledged when every request it scored is answered
            async for event in stream.events():
                self.on_score_event(event)

        async def read_outcomes(stream: Any) -> None:
            stream.enable_acks = False  # acknowledged when its observations are durable
            async for event in stream.events():
                self.control.on_outcome_event(event, self.writer, self.clock())

        app.agent(requests, name="rendezvous.requests")(read_requests)
        app.agent(scores, name="rendezvous.scores")(read_scores)
        app.agent(outcomes, name="rendezvous.outcomes")(read_outcomes)
        app.task(self._housekeeping)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.before_stop_callbacks.append(self._before_stop)
        app.rebalance_start_callbacks.append(self._on_rebalance_start)

        async def ready(web: Any, request: Any) -> Any:
            return web.json(self.status(), status=200 if self.ready and self.link.reachable else 503)

        async def stats(web: Any, request: Any) -> Any:
            return web.json(self.status())

        async def metrics(web: Any, request: Any) -> Any:
            # aiohttp adds the charset itself and refuses one in content_type
            return web.bytes(generate_latest(self.metrics.registry),
                             content_type=CONTENT_TYPE_LATEST.split("; charset")[0])

        app.page("/ready")(ready)
        app.page("/stats")(stats)
        app.page("/metrics")(metrics)

    def _watch_canary(self) -> None:
        """Follow the policy in force: a new champion, canary or canary setting starts a new watch."""
        compiled = self.control.store.compiled
        if compiled is self._canary_policy:  # called every tick: the common case is one identity check
            return
        self._canary_policy = compiled
        spec = compiled.doc.canary
        key = (compiled.champion, spec) if spec else None  # the spec is a frozen model: compared by value
        if key == self._canary_key:
            return
        self._canary_key = key
        self.canary = None if spec is None else CanaryWatch(compiled.champion, spec.model, DriftSettings(
            reference_size=spec.reference, window=spec.window, shift_sd=spec.shift_sd,
            false_alarms=spec.false_alarms_per_100k))

    def consumer_lag(self) -> dict[str, int]:
        """Per topic (short name): records on the broker this worker has not read yet."""
        consumer = self.app.consumer
        lag: dict[str, int] = {}
        try:
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                read = consumer._read_offset.get(tp)  # Faust 0.15 (pinned)
                if highwater is not None:
                    short = tp.topic.rsplit(".", 1)[-1]
                    lag[short] = lag.get(short, 0) + max(highwater - ((read + 1) if read is not None else 0), 0)
        except (AttributeError, RuntimeError, NotReady):  # not started yet (a scrape can come first)
            return {}
        return lag

    def _uncommitted(self) -> dict[str, int]:
        """Per partition: records read but not yet committable (awaiting durable work)."""
        consumer = self.app.consumer
        try:
            read, committed = consumer._read_offset, consumer._committed_offset  # Faust 0.15 (pinned)
        except AttributeError:  # pragma: no cover
            return {}
        return {f"{tp.topic.rsplit('.', 1)[-1]}/{tp.partition}": (read[tp] or 0) + 1 - (committed.get(tp) or 0)
                for tp in sorted(read) if read[tp] is not None}

    def presence(self) -> tuple[dict[str, str], dict[str, Any]]:
        """What this worker announces on the presence topic: where to reach it, the policy it has in force."""
        port = self.app.listen_port  # 0 until the web server has bound its free port
        base = service_url(self.settings.web_host, port) if port else None
        urls = {"metrics": f"{base}/metrics", "stats": f"{base}/stats"} if base else {}
        if self.failover is not None:
            urls.update(self.failover.urls())
        policy = self.router.policy
        return urls, {"policy": policy.name, "policy_version": policy.version, "partitions": sorted(self.owned),
                      "ready": self.ready and self.link.reachable}

    def status(self) -> dict[str, Any]:
        stats = self.router.stats
        return {
            "worker": self.settings.worker_id,
            "kafka": {"bootstrap": self.settings.kafka.bootstrap, **describe(self.settings.kafka.client)},
            "ready": self.ready and self.link.reachable,
            "broker_problem": self.link.problem(),
            "partitions": sorted(self.owned),
            "pending": self.router.pending_count,
            "orphan_scores": self.router.orphan_count,
            "requests": stats.requests,
            "duplicate_requests": stats.duplicate_requests,
            "scores": stats.scores,
            "results_written": self.writer.results_written,
            "results_in_flight": len(self.writer),
            "uncommitted": self._uncommitted(),
            "deadletters_written": self.writer.deadletters_written,
            "sla_guard_ms": self.settings.sla_guard_ms,
            "sla_misses": dict(self.metrics.sla_misses),  # written after the SLA, by cause
            "ignored_reply_to": self.ignored_reply_to,
            "forged_scores": self.forged_scores,
            "probes_answered": self.probes_answered,
            "canary": self.canary.report().as_dict() if self.canary else None,
            "standby": self.failover.status() if self.failover else None,
            "dropped_scores": {f"{kind}/{model}": n for (kind, model), n in stats.dropped.items()},
            "decisions": {f"{reason}/{model or '-'}": n for (reason, model), n in stats.decisions.items()},
            **self.control.status(self.clock()),
        }

    # ------------------------------------------------------------------ events

    def on_request_event(self, event: Any) -> None:
        message = event.message
        if self.partitions.wait_for_recovery(message.partition, self.on_request_event, event):
            return
        reply_to, probe = self._reply_to(message)
        hold = Ack(event, reply_to=reply_to)
        if probe:
            self._answer_probe(hold, message)
            return
        try:
            head = decode_request_head(message.value, self.settings.max_request_bytes)
        except WireError as exc:
            kind = "too_large" if isinstance(exc, RecordTooLarge) else "invalid_request"
            self.writer.dead_letter(hold, message.key, message.value, str(exc),
                                    message.topic, message.partition, message.offset, kind)
            return
        record_ms = message.timestamp * 1000.0 if message.timestamp else self.clock()
        self._apply(self.router.on_request(head.request_id, message.partition, record_ms, hold, self.clock(),
                                           head.event_time))

    def _answer_probe(self, hold: Ack, message: Any) -> None:
        """A gateway asks whether a worker answers: yes, at once, to that gateway only (see PROBE)."""
        try:
            request_id = decode_request_head(message.value, self.settings.max_request_bytes).request_id
        except WireError:
            request_id = None
        if request_id is not None and hold.reply_to is not None:
            self.writer.reply_probe(request_id, hold.reply_to, self.router.policy.name, self.router.policy.version)
            self.probes_answered += 1
        hold.release()

    def _reply_to(self, message: Any) -> tuple[str | None, bool]:
        """The reply topic a gateway named in the request's headers, if it is one of ours; whether it is a probe."""
        topic, foreign, probe = self.topics.reply_route(message.headers)
        if foreign is not None:
            self.ignored_reply_to += 1  # counted, logged once: a client must not be able to flood the log
            if self.ignored_reply_to == 1:
                log.warning("ignored reply-to %r: not a replies topic of %s (counted in /stats from now on)",
                            foreign, self.topics.namespace)
        return topic, probe

    def on_score_event(self, event: Any) -> None:
        message = event.message
        if self.partitions.wait_for_recovery(message.partition, self.on_score_event, event):
            return
        hold = Ack(event, refs=0)
        try:
            batch = decode_score_batch(message.value)
        except WireError as exc:
            self.writer.dead_letter(Ack(event), message.key, message.value, f"invalid score record: {exc}",
                                    message.topic, message.partition, message.offset, "invalid_score")
            return
        refused = self._unauthentic(batch.model, message)
        if refused:
            self.writer.dead_letter(Ack(event), message.key, message.value, refused,
                                    message.topic, message.partition, message.offset, "forged_score")
            return
        now = self.clock()
        self.running_models.scored(batch.model, now)
        if batch.model in self.router.policy.models:  # the series of /metrics are the policy's models, no others
            self.metrics.observe_scores(batch.model, batch.scores, self.router.pending_t0, now)
        if self.canary is not None:
            # Every score of the champion and the canary, also one that arrives before its request
            # (it waits as an orphan): filtering by the requests seen so far dropped those, and the
            # drift's count with them. Scores for requests never sent are kept out by their signature.
            for s in batch.scores:
                self.canary.observe(batch.model, s.request_id, s.score)
        step = self.router.on_scores(batch.model, batch.model_version, batch.scores, hold, now)
        hold.refs += step.kept
        if step.kept == 0:
            event.ack()
        self._apply(step)
        self.partitions.scores_read(message.partition, message.offset)

    def _unauthentic(self, model: str, message: Any) -> str | None:
        """Why a score record is refused as not the model's own (with a secret only), or None."""
        refusal = score_refusal(self.settings.secret, model, message.value, message.headers)
        if refusal is not None:
            self.forged_scores += 1
        return refusal

    def _apply(self, step: Step) -> None:
        for decision in step.decisions:
            self.writer.write(decision)
            self.control.on_decision(decision)
            self.metrics.observe_decision(decision)
        for hold in step.released:
            hold.release()
        if step.late:
            self.control.on_late(step.late)
        self._arm_timer()

    # ------------------------------------------------------------------ time

    def _arm_timer(self) -> None:
        wake = self.router.next_wake_ms()
        if wake is None or (self._timer_at is not None and self._timer_at <= wake):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = wake
        self._timer = self.app.loop.call_later(max(wake - self.clock(), 0.0) / 1000.0, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._apply(self.router.on_tick(self.clock()))

    def _write_standby(self, decisions: list[Decision]) -> None:
        """Answers this worker's standby owes: a lost peer's, or its own partitions' during a rebalance."""
        for decision in decisions:
            self.writer.write(decision)
            # if the partition is (being) recovered here, the re-read request is not answered again
            self.router.mark_answered((decision.pending.request_id,), decision.decided_ms)
            self.control.on_decision(decision)
            self.metrics.observe_decision(decision)

    async def _housekeeping(self) -> None:
        if self.failover is not None:
            await self.failover.start()
        # Two ways a deadline fires, on purpose: the timer above fires at the exact
        # deadline while the loop is idle; this loop re-ticks the router every 5 ms as a
        # backstop, because a call_later callback runs late when the loop is busy with a
        # long batch, and because it must serve delivery reports anyway. Both call the
        # same router.on_tick, which is idempotent: a deadline is decided once.
        while True:
            self.housekeep()
            if self.fatal_error:
                await self.app.crash(RuntimeError(self.fatal_error))
                return
            await asyncio.sleep(HOUSEKEEPING_S)

    def housekeep(self) -> None:
        """One round: serve delivery reports (which acknowledge records), apply control records, decide what is due."""
        self.writer.poll()
        now = self.clock()
        self.control.tick(now)
        self._watch_canary()
        self._apply(self.router.on_tick(now))
        if self.failover is not None:
            self.failover.round(now)

    def _fatal(self, reason: str) -> None:
        log.error("%s; stopping so that a restart re-reads the unanswered requests", reason)
        self.fatal_error = reason

    # ------------------------------------------------------------------ partitions

    @property
    def owned(self) -> set[int]:
        return self.partitions.owned

    async def _on_assigned(self, sender: Any, assigned: set[TP], **_: Any) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic == self.topics.requests}
        await self.partitions.assigned(partitions)
        self.ready = True
        log.info("worker %s owns partitions %s", self.settings.worker_id, sorted(partitions))

    async def _rewind(self, topic: str, partition: int, offset: int) -> None:
        await self.app.consumer.rewind(TP(topic, partition), offset)

    async def _on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == self.topics.requests}
        self.partitions.revoked(partitions)
        if self.failover is not None:
            await self.failover.revoked(partitions, self.clock())

    def _on_rebalance_start(self) -> None:
        # Faust waits for every unacknowledged record before handing partitions over;
        # scores still waiting for an unseen request must not hold that up.
        self._apply(self.router.release_orphans())

    async def _before_stop(self) -> None:
        # Faust's own stop waits a minute for a consumer thread that cannot leave its group
        # while the broker is down: bounded here, as every service's stop is.
        self.stop_deadline.arm()
        self._on_rebalance_start()
        self.partitions.release_all("stopping")
        if self.failover is not None:
            await self.failover.stop()
        self.control.crediting.flush()
