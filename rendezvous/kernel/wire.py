"""The wire contract: every record the system reads or writes, as typed schemas.

All values are JSON. These :mod:`msgspec` structs both document the contract and
validate it: decoding a record that breaks it raises :class:`WireError` with a
message naming the field, which is what lands in the dead-letter topic.

>>> req = decode_request(b'{"request_id": "r1", "features": {"x": 1.5}}')
>>> req.request_id, req.features
('r1', {'x': 1.5})
>>> decode_request(b'{"features": {}}')
Traceback (most recent call last):
...
rendezvous.kernel.errors.WireError: Object missing required field `request_id`
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec

from rendezvous.kernel.errors import WireError

__all__ = [
    "WireError", "RecordTooLarge", "Request", "RequestHead", "Score", "ScoreBatch", "Candidate", "Result",
    "Outcome", "Reason", "encode", "decode_request", "decode_request_head", "decode_score_batch",
    "decode_result", "decode_outcome", "decode_json", "deadletter_headers", "DEFAULT_MAX_REQUEST_BYTES",
    "DLQ_REASON", "DLQ_TOPIC", "DLQ_PARTITION", "DLQ_OFFSET", "DLQ_SERVICE", "DLQ_VALUE_DROPPED",
]

#: Largest request the system accepts, in bytes; larger ones are dead-lettered.
DEFAULT_MAX_REQUEST_BYTES = 1_048_576

T = TypeVar("T")

RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class RecordTooLarge(WireError):
    """A record over the size limit; dead-lettered under its own kind so it can be alerted on."""

    kind = "too_large"


# --------------------------------------------------------------------------- requests


class Request(msgspec.Struct, frozen=True):
    """A scoring request, written by a client to the requests topic (key = request id).

    ``event_time`` is when the event happened (epoch ms), used for the prediction
    latency metric. The SLA clock starts at the record's Kafka timestamp.
    """

    request_id: RequestId
    features: dict[str, Any]
    event_time: int | float | None = None


class RequestHead(msgspec.Struct, frozen=True):
    """The part of a request the rendezvous needs. ``features`` stays undecoded."""

    request_id: RequestId
    features: msgspec.Raw
    event_time: int | float | None = None


# --------------------------------------------------------------------------- scores


class Score(msgspec.Struct, frozen=True, omit_defaults=True):
    """One model's answer to one request, with when it was seen and scored (epoch ms)."""

    request_id: RequestId
    seen_ms: float
    started_ms: float
    finished_ms: float
    score: float | None = None
    error: str | None = None


class ScoreBatch(msgspec.Struct, frozen=True, omit_defaults=True):
    """A record on the scores topic: one or more scores from one model instance.

    *Who* (model, version, artifact, host) is said once per record; *what* and
    *when* per score. All scores in a record belong to requests of one partition,
    and the record is written to that same partition number of the scores topic.
    A runner that writes one score per record simply sends batches of one.
    """

    model: ModelName
    model_version: str
    host: str
    scores: list[Score]
    instance: str = ""
    artifact_sha256: str | None = None


# --------------------------------------------------------------------------- results

Reason = Literal["preferred", "fallback", "default"]


class Candidate(msgspec.Struct, frozen=True, omit_defaults=True):
    """A score that had arrived when the result was decided."""

    model_version: str
    arrived_ms: float  # after the request's timestamp
    score: float | None = None
    error: str | None = None


class Result(msgspec.Struct, frozen=True, omit_defaults=True):
    """The rendezvous's answer to a request (key = request id).

    Its timing, all on the worker's clock (epoch ms): ``request_ms`` when the SLA clock
    started (the record's timestamp), ``due_ms`` when the policy's rule would first have
    answered given when each score arrived, ``decided_ms`` when the worker answered.
    ``candidates`` are the scores that had arrived by then, with their arrival times, so
    that anyone can check the choice against the policy.
    """

    request_id: str
    model: str | None
    model_version: str | None
    score: float | None
    reason: Reason
    detail: str
    latency_ms: float  # decision time - request timestamp
    intake_ms: float  # when the rendezvous saw the request - request timestamp (its backlog)
    policy: str
    policy_version: int
    candidates: dict[str, Candidate]
    request_ms: float
    decided_ms: float
    worker: str
    event_time: int | float | None = None
    audit: dict[str, Any] | None = None
    due_ms: float | None = None  # None in results written before it was recorded


class Outcome(msgspec.Struct, frozen=True):
    """The truth about a request, known later (key = request id)."""

    request_id: RequestId
    outcome: float | bool
    time_ms: float | None = None


# --------------------------------------------------------------------------- codecs

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(Request)
_request_head_decoder = msgspec.json.Decoder(RequestHead)
_score_batch_decoder = msgspec.json.Decoder(ScoreBatch)
_result_decoder = msgspec.json.Decoder(Result)
_outcome_decoder = msgspec.json.Decoder(Outcome)
_features_decoder = msgspec.json.Decoder(dict[str, Any])
_json_decoder = msgspec.json.Decoder()

encode = _encoder.encode


def _decode(decoder: msgspec.json.Decoder[T], data: bytes) -> T:
    # Any record bytes at all must end as a WireError (and so as a dead letter), never
    # as an exception that stops a consumer: msgspec raises DecodeError/ValidationError
    # for bad JSON or schema, but RecursionError for deeply nested values and
    # UnicodeDecodeError for invalid UTF-8 inside strings.
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise WireError(str(exc)) from None
    except RecursionError:
        raise WireError("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise WireError(f"invalid UTF-8 in a string: {exc.reason} (byte 0x{exc.object[exc.start]:02x})") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise WireError(f"undecodable record: {type(exc).__name__}: {exc}") from None


def decode_json(data: bytes) -> Any:
    """Any strict JSON value (no NaN or Infinity, numbers in range, valid UTF-8), or :class:`WireError`.

    >>> decode_json(b'{"x": [1, 2.5, null]}')
    {'x': [1, 2.5, None]}
    >>> decode_json(b'{"x": NaN}')
    Traceback (most recent call last):
    ...
    rendezvous.kernel.errors.WireError: JSON is malformed: invalid character (byte 6)
    """
    return _decode(_json_decoder, data)


def decode_request(data: bytes) -> Request:
    return _decode(_request_decoder, data)


def decode_request_head(data: bytes | None, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> RequestHead:
    """Validate a request record in full: size, JSON, a request id, features an object.

    The features are read to the end (about a microsecond for a typical request) though
    only the head is kept: a record the models cannot read (invalid UTF-8 anywhere, a
    number out of range) must be dead-lettered here, not answered by default after every
    runner skipped it.

    >>> decode_request_head(b'{"request_id": "r1", "features": {"x": 1e999}}')
    Traceback (most recent call last):
    ...
    rendezvous.kernel.errors.WireError: Number out of range - at `$.features[...]`
    """
    if data is None:
        raise WireError("empty record: a request needs a JSON value")
    if len(data) > max_bytes:
        raise RecordTooLarge(f"request too large: {len(data)} bytes > limit {max_bytes}")
    head: RequestHead = _decode(_request_head_decoder, data)
    if bytes(head.features)[:1] != b"{":
        raise WireError("Expected `object` - at `$.features`")
    try:
        _decode(_features_decoder, bytes(head.features))
    except WireError as exc:
        raise WireError(_at_features(str(exc))) from None
    return head


def _at_features(message: str) -> str:
    """Re-root a path in a message about the features alone (``$[...]``) at ``$.features``."""
    if "`$" in message:
        return message.replace("`$", "`$.features", 1)
    return f"{message} - in `$.features`"


def decode_score_batch(data: bytes | None) -> ScoreBatch:
    if data is None:
        raise WireError("empty record: a score record needs a JSON value")
    return _decode(_score_batch_decoder, data)


def decode_result(data: bytes) -> Result:
    return _decode(_result_decoder, data)


def decode_outcome(data: bytes) -> Outcome:
    return _decode(_outcome_decoder, data)


# --------------------------------------------------------------------------- dead letters

#: Headers on a dead-lettered record (after Kafka Connect's DLQ convention):
#: the record's key and value are the original bytes, untouched.
DLQ_REASON = "rendezvous.error.reason"
DLQ_TOPIC = "rendezvous.error.topic"
DLQ_PARTITION = "rendezvous.error.partition"
DLQ_OFFSET = "rendezvous.error.offset"
DLQ_SERVICE = "rendezvous.error.service"
DLQ_VALUE_DROPPED = "rendezvous.error.value-dropped"  # set when the value was too large to copy


def deadletter_headers(reason: str, topic: str, partition: int, offset: int, service: str) -> list[tuple[str, bytes]]:
    return [
        (DLQ_REASON, reason.encode()),
        (DLQ_TOPIC, topic.encode()),
        (DLQ_PARTITION, str(partition).encode()),
        (DLQ_OFFSET, str(offset).encode()),
        (DLQ_SERVICE, service.encode()),
    ]
