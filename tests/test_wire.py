"""The wire contract: what is accepted, and the reasons given for what is not."""

import pytest

from rendezvous.kernel.wire import (
    ScoreBatch,
    WireError,
    decode_request,
    decode_request_head,
    decode_score_batch,
    encode,
)


def test_request_round_trip():
    raw = encode({"request_id": "r1", "features": {"x": 1}, "event_time": 5})
    assert decode_request(raw).features == {"x": 1}
    head = decode_request_head(raw)
    assert (head.request_id, head.event_time) == ("r1", 5)


def test_unknown_fields_are_allowed_for_forward_compatibility():
    assert decode_request_head(b'{"request_id": "r", "features": {}, "tenant": "t1"}').request_id == "r"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "malformed"),
        (b"[1, 2]", "Expected `object`"),
        (b'{"features": {}}', "missing required field `request_id`"),
        (b'{"request_id": "", "features": {}}', "length >= 1"),
        (b'{"request_id": 7, "features": {}}', "Expected `str`"),
        (b'{"request_id": "r"}', "missing required field `features`"),
        (b'{"request_id": "r", "features": [1]}', "`$.features`"),
        (b'{"request_id": "r", "features": {}, "event_time": "today"}', "`$.event_time`"),
        (None, "empty record"),
    ],
)
def test_bad_requests_say_why(raw, reason):
    with pytest.raises(WireError) as info:
        decode_request_head(raw)
    assert reason.lower() in str(info.value).lower()


def test_too_large_requests_are_refused_before_parsing():
    with pytest.raises(WireError, match="too large: 101 bytes > limit 100"):
        decode_request_head(b"x" * 101, max_bytes=100)


def test_score_batches():
    raw = encode(ScoreBatch("m1", "1", "h", [], "h/1", None))
    assert decode_score_batch(raw).model == "m1"
    raw = (b'{"model": "m1", "model_version": "1", "host": "h", "scores": '
           b'[{"request_id": "r", "seen_ms": 1, "started_ms": 1, "finished_ms": 2, "score": 0.3}]}')
    assert decode_score_batch(raw).scores[0].score == 0.3
    with pytest.raises(WireError, match="model"):
        decode_score_batch(b'{"model_version": "1", "host": "h", "scores": []}')
