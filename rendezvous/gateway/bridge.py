"""The gateway's Kafka side: send requests that name this gateway's reply topic, await their results.

Reply route: every gateway instance has a topic of its own, ``PREFIX.replies.<id>``
(:meth:`Topics.replies`), created when it starts. Each request it sends carries a
``rendezvous.reply-to`` header naming it, and the worker writes the result there
as well as to the results topic. So a gateway reads only its own callers'
results, however many gateways and workers there are; a result that comes after
its caller was answered 504 is dropped, never answered twice.

The policy in force (its name, version, SLA and models) is followed from the
policies topic, exactly as workers pick it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from policies.record import RefusedPolicyRecord, read_policy_record
from policies.schema import Policy
from rendezvous.kernel.admin import create_topic, delete_topic
from rendezvous.kernel.clock import now_ms
from rendezvous.kernel.kafka import poll_batch, produce
from rendezvous.kernel.link import BrokerLink
from rendezvous.kernel.settings import BACKGROUND_FETCH_WAIT_MS, KafkaSettings
from rendezvous.kernel.topics import PROBE, REPLY_TO, Topics
from rendezvous.kernel.trust import signature_of
from rendezvous.kernel.wire import Outcome, Result, WireError, decode_result, encode

__all__ = ["KafkaBridge", "Reply"]

log = logging.getLogger("rendezvous.gateway")
_KNOWN_PARTITIONS = 100_000  # request id -> its partition, for outcomes of requests answered here


def _settle(future: asyncio.Future[int], partition: int, problem: str | None) -> None:
    if future.done():  # timed out already
        return
    if problem:
        future.set_exception(RuntimeError(problem))
    else:
        future.set_result(partition)


@dataclass(frozen=True)
class Reply:
    result: Result
    partition: int


class KafkaBridge:
    """Start, then :meth:`ask` from the event loop; :meth:`stop` on shutdown."""

    def __init__(self, kafka: KafkaSettings, topics: Topics, gateway_id: str | None = None,
                 policy_key: bytes | None = None) -> None:
        self.kafka, self.topics, self.policy_key = kafka, topics, policy_key  # with a key: signed policies only
        self.gateway_id = gateway_id or uuid.uuid4().hex[:12]
        self.reply_topic = topics.replies(self.gateway_id)
        self.policy: Policy | None = None
        self.last_reply_ms = 0.0
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._partitions: OrderedDict[str, int] = OrderedDict()
        self._partitions_lock = threading.Lock()  # written by delivery reports, read by the event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._producer = Producer(kafka.producer(**{"client.id": f"gateway-{self.gateway_id}"}))
        self.link = BrokerLink(kafka)  # readiness: the broker answers

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        create_topic(self.kafka, self.reply_topic, 1)
        replies = Consumer(self.kafka.consumer(f"{self.reply_topic}.reader", **{"enable.auto.commit": False}))
        _, end = replies.get_watermark_offsets(TopicPartition(self.reply_topic, 0), timeout=10)
        replies.assign([TopicPartition(self.reply_topic, 0, end)])  # only what is asked from now on
        policies = Consumer(self.kafka.consumer(f"{self.reply_topic}.policies", **{
            "enable.auto.commit": False, "fetch.wait.max.ms": max(self.kafka.fetch_wait_ms, 5 * BACKGROUND_FETCH_WAIT_MS)}))
        policies.assign([TopicPartition(self.topics.policies, 0, 0)])
        # the replies thread also serves the producer's delivery reports; the policy follower does not
        for target, consumer, name, serve in ((self._read_replies, replies, "replies", True),
                                              (self._follow_policies, policies, "policies", False)):
            thread = threading.Thread(target=self._run, args=(target, consumer, serve), name=f"gateway-{name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        self.link.start()
        log.info("gateway %s: replies on %s", self.gateway_id, self.reply_topic)

    def stop(self) -> None:
        self.link.stop()
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._producer.flush(5)
        refused = delete_topic(self.kafka, self.reply_topic)  # best effort: a crashed gateway leaves an idle topic
        if refused is not None:
            log.warning("could not delete the reply topic %s (%s); on a cluster with ACLs, grant the gateway's "
                        "principal its role: rendezvous topics acls --grant gateway=PRINCIPAL", self.reply_topic, refused)

    def _run(self, target: Any, consumer: Consumer, serve_deliveries: bool) -> None:
        try:
            while not self._stop.is_set():
                for message in poll_batch(consumer, 1000, 0.05):
                    if not message.error():
                        target(message)
                if serve_deliveries:
                    self._producer.poll(0)
        finally:
            consumer.close()

    # ------------------------------------------------------------------ policies

    def _follow_policies(self, message: Message) -> None:
        try:
            doc, _ = read_policy_record(message.value(), signature_of(message.headers()), self.policy_key)
        except RefusedPolicyRecord as exc:
            log.warning("ignored a policy record: %s", exc)
            return
        if self.policy is None or doc.version > self.policy.version:
            self.policy = doc

    # ------------------------------------------------------------------ requests and replies

    def _read_replies(self, message: Message) -> None:
        try:
            result = decode_result(message.value() or b"")
        except WireError:
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._resolve, result)

    def _resolve(self, result: Result) -> None:  # on the event loop
        self.last_reply_ms = now_ms()
        future = self._waiting.pop(result.request_id, None)
        if future is not None and not future.done():
            future.set_result(Reply(result, -1))

    async def ask(self, requests: list[tuple[str, dict[str, Any]]], timeout_s: float,
                  probe: bool = False) -> list[Reply | None]:
        """Send each ``(request_id, features)``; each reply, or None if it had not come within ``timeout_s``."""
        assert self._loop is not None
        futures = []
        headers = [(REPLY_TO, self.reply_topic.encode())] + ([(PROBE, b"1")] if probe else [])
        for request_id, features in requests:
            future: asyncio.Future[Reply] = self._loop.create_future()
            self._waiting[request_id] = future
            futures.append(future)
            value = encode({"request_id": request_id, "features": features, "event_time": int(now_ms())})
            produce(self._producer, self.topics.requests, value, request_id.encode(),
                    on_delivery=None if probe else self._delivered(request_id), headers=headers)
        done, _ = await asyncio.wait(futures, timeout=timeout_s)
        out: list[Reply | None] = []
        for (request_id, _), future in zip(requests, futures, strict=True):
            self._waiting.pop(request_id, None)
            if future in done and future.exception() is None:
                reply = future.result()
                with self._partitions_lock:
                    partition = self._partitions.get(request_id, -1)
                out.append(Reply(reply.result, partition))
            else:
                future.cancel()
                out.append(None)
        return out

    def _delivered(self, request_id: str) -> Any:
        def delivered(err: KafkaError | None, msg: Message) -> None:  # on the producer's poll: any thread
            if err is not None:
                log.error("could not send request %s: %s", request_id, err.str())
                return
            with self._partitions_lock:
                self._partitions[request_id] = msg.partition()
                while len(self._partitions) > _KNOWN_PARTITIONS:
                    self._partitions.popitem(last=False)
        return delivered

    async def send_outcome(self, request_id: str, outcome: bool | float, timeout_s: float) -> tuple[int, str] | None:
        """Write the outcome to its request's partition; ``(partition, how it was placed)``, None if not written.

        The partition is the one the request went to when it came through this gateway;
        otherwise the one its id's key hashes to, which is where every rendezvous client
        (a gateway, the Kafka client) writes a request keyed by its id: either way the
        worker that saw the request sees its outcome. An id no worker saw is counted
        there as an unknown outcome (``/stats``), not guessed at here.
        """
        assert self._loop is not None
        with self._partitions_lock:
            known = self._partitions.get(request_id)
        loop = self._loop
        written: asyncio.Future[int] = loop.create_future()

        def delivered(err: KafkaError | None, msg: Message) -> None:  # on the replies thread
            loop.call_soon_threadsafe(_settle, written, msg.partition(), err.str() if err else None)

        produce(self._producer, self.topics.outcomes, encode(Outcome(request_id, outcome, now_ms())),
                request_id.encode(), -1 if known is None else known, on_delivery=delivered)
        try:
            partition = await asyncio.wait_for(written, timeout_s)
        except (TimeoutError, RuntimeError) as exc:
            log.error("could not write the outcome of %s: %s", request_id, exc or "timed out")
            return None
        return partition, "its request's partition" if known is not None else "its id's key, as requests are keyed"

    def recently_answered(self, within_s: float = 30.0) -> bool:
        return now_ms() - self.last_reply_ms < within_s * 1000

    async def probe(self, timeout_s: float) -> bool:
        """Whether a worker answers a readiness probe (not traffic: see :data:`PROBE`)."""
        [reply] = await self.ask([(f"gateway-probe-{time.time_ns()}", {})], timeout_s, probe=True)
        return reply is not None
