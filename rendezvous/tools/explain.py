"""``rendezvous explain``: the whole story of one request, read back from the streams.

The request (or its dead letter), every model's score with its timings (including
scores that came after the answer), the result and why it was chosen, and the
outcome if it has arrived. Everything is read from Kafka, not from a worker's
memory, so it works for any request still within the topics' retention.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import Consumer

from rendezvous.kernel.kafka import read_range, since_offsets
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.wire import (
    DLQ_REASON,
    Result,
    WireError,
    decode_outcome,
    decode_request,
    decode_result,
    decode_score_batch,
)

__all__ = ["Story", "explain", "render"]


@dataclass
class Story:
    request_id: str
    request: dict[str, Any] | None = None
    deadletter: dict[str, Any] | None = None
    scores: list[dict[str, Any]] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "request": self.request, "deadletter": self.deadletter,
                "scores": self.scores, "results": [msgspec.to_builtins(r) for r in self.results],
                "outcomes": self.outcomes}


def _scan(kafka: KafkaSettings, topic: str, since_ms: float, timeout: float = 30.0):  # noqa: ANN202
    # a group under the topic's prefix (the topic is PREFIX.something): where the ACLs let readers in
    consumer = Consumer(kafka.consumer(f"{topic}.readers.explain-{time.time_ns()}", **{"enable.auto.commit": False}))
    try:
        yield from read_range(consumer, topic, since_offsets(consumer, topic, since_ms, timeout), timeout)
    finally:
        consumer.close()


def explain(kafka: KafkaSettings, topics: Topics, request_id: str, since_ms: float) -> Story:
    story, key = Story(request_id), request_id.encode()
    for m in _scan(kafka, topics.requests, since_ms):
        if m.key() == key:
            try:
                req = decode_request(m.value())
                story.request = {"partition": m.partition(), "offset": m.offset(), "timestamp_ms": m.timestamp()[1],
                                 "features": req.features, "event_time": req.event_time}
            except WireError:
                pass
    for m in _scan(kafka, topics.deadletter, since_ms):
        if m.key() == key:
            story.deadletter = {"reason": dict(m.headers() or []).get(DLQ_REASON, b"").decode(), "value": repr(m.value())}
    for m in _scan(kafka, topics.scores, since_ms):
        if key not in (m.value() or b""):
            continue  # cheap filter before decoding
        try:
            batch = decode_score_batch(m.value())
        except WireError:
            continue
        for s in batch.scores:
            if s.request_id == request_id:
                story.scores.append({"model": batch.model, "version": batch.model_version, "instance": batch.instance,
                                     "artifact_sha256": batch.artifact_sha256, "score": s.score, "error": s.error,
                                     "seen_ms": s.seen_ms, "started_ms": s.started_ms, "finished_ms": s.finished_ms,
                                     "written_ms": m.timestamp()[1]})
    for m in _scan(kafka, topics.results, since_ms):
        if m.key() == key:
            story.results.append(decode_result(m.value()))
    for m in _scan(kafka, topics.outcomes, since_ms):
        if m.key() == key:
            try:
                o = decode_outcome(m.value())
                story.outcomes.append({"outcome": o.outcome, "time_ms": o.time_ms or m.timestamp()[1]})
            except WireError:
                pass
    return story


def render(story: Story) -> list[str]:
    """The story as lines of text, times relative to the request's timestamp."""
    t0 = story.request["timestamp_ms"] if story.request else (story.results[0].request_ms if story.results else None)
    rel = (lambda t: f"+{t - t0:9.1f} ms") if t0 is not None else (lambda t: f"{t:.0f}")
    lines = [f"request {story.request_id}"]
    if story.request:
        r = story.request
        lines.append(f"  sent        partition {r['partition']} offset {r['offset']}, features {r['features']}")
    elif story.deadletter:
        lines.append(f"  dead-lettered: {story.deadletter['reason']}")
    else:
        lines.append("  not found in the requests topic (outside the time range, or never sent)")
    # "In time" is the worker's own judgement: a score is in time if it had arrived at the
    # worker when it decided (it is then among the result's candidates), whatever the runner's clock says.
    decided = story.results[0] if story.results else None
    for s in sorted(story.scores, key=lambda s: s["written_ms"]):
        if decided is None:
            when = "no answer yet"
        elif s["model"] in decided.candidates:
            when = f"arrived at +{decided.candidates[s['model']].arrived_ms:.1f} ms, in time"
        else:
            when = "late: had not arrived when the answer was decided"
        what = f"score {s['score']:.4f}" if s["score"] is not None else f"error {s['error']}"
        lines.append(f"  {rel(s['finished_ms'])}  {s['model']} {s['version']} on {s['instance']}: {what} "
                     f"(scored in {s['finished_ms'] - s['started_ms']:.2f} ms; {when})")
    for r in story.results:
        lines.append(f"  {rel(r.decided_ms)}  answered with {r.model or 'the default'} ({r.reason}): {r.detail}")
        lines.append(f"               policy {r.policy} v{r.policy_version}, worker {r.worker}"
                     + (f", audit {r.audit}" if r.audit else ""))
    if len(story.results) > 1:
        lines.append(f"  !! answered {len(story.results)} times")
    for o in story.outcomes:
        lines.append(f"  {rel(o['time_ms'])}  outcome {o['outcome']}")
    return lines
