"""The HTTP gateway (Open Inference Protocol v2), live: real processes, a real HTTP client (httpx)."""

from __future__ import annotations

import concurrent.futures
import gzip
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from policies import load_policy_text
from rendezvous.kernel.wire import Outcome, Result
from rendezvous.service.policies import publish_policy
from tests.conftest import CHAIN_POLICY, CHAIN_SCORES, System, eventually, scripted_spec, settings_for, write_policy
from tests.rule import Chain, check

pytestmark = pytest.mark.slow
POLICY = "test-chain"
CHAIN = Chain((("m3", 30), ("m2", 30), ("m1", None)), sla_ms=100)  # CHAIN_POLICY


def score_of(model: str | None) -> float:
    return CHAIN_SCORES[model] if model else 0.25  # 0.25: CHAIN_POLICY's default


@pytest.fixture(scope="module")
def served(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, list[str]]]:
    directory = tmp_path_factory.mktemp("gateway")
    with System(settings_for(broker), directory) as s:  # closed even if the setup fails
        models = s.start_chain_models()
        workers = s.start_workers(write_policy(directory, CHAIN_POLICY))
        s.wait_ready(models + workers)
        s.warm_up()
        gateways = [s.runtime.start_gateway(name=f"gateway/{i}") for i in range(2)]
        s.wait_ready(gateways)
        urls = [s.url(g) for g in gateways]
        yield s, urls


@pytest.fixture
def http(served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[1][0], timeout=10) as client:
        yield client


def test_an_oip_request_is_answered_with_the_score_and_the_decision(served, http: httpx.Client):
    body = {"id": "oip-1", "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [0.5]}]}
    reply = http.post(f"/v2/models/{POLICY}/infer", json=body)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert (out["model_name"], out["model_version"], out["id"]) == (POLICY, "1", "oip-1")
    p = out["parameters"]
    assert (p["request_id"], p["policy_version"]) == ("oip-1", 1)
    result = served[0].result_of("oip-1")  # the worker's record, on the results topic
    check(result, CHAIN)  # which model: the chain's rule, given when the scores arrived
    assert (p["model"], p["reason"], p["latency_ms"]) == (result.model, result.reason, result.latency_ms)
    assert out["outputs"] == [{"name": "score", "datatype": "FP64", "shape": [1], "data": [score_of(p["model"])]}]


def test_several_rows_are_several_requests_and_plain_features_work_too(http: httpx.Client):
    body = {"id": "rows", "inputs": [{"name": "a", "datatype": "FP32", "shape": [3, 1], "data": [[1], [2], [3]]},
                                     {"name": "m3_fail", "datatype": "BOOL", "shape": [3], "data": [False, True, False]}]}
    out = http.post(f"/v2/models/{POLICY}/infer", json=body).json()
    assert out["parameters"]["request_id"] == ["rows-0", "rows-1", "rows-2"]
    models = out["parameters"]["model"]
    assert models[1] != "m3"  # row 1's m3 failed: its own request fell back
    assert out["outputs"][0]["data"] == [score_of(m) for m in models]
    plain = http.post(f"/v2/models/{POLICY}/infer", json={"features": {"m3_fail": True}})
    assert plain.status_code == 200 and plain.json()["parameters"]["model"] != "m3"


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"inputs": [{"name": "x", "datatype": "FP64", "data": [1]}]}, 400, "inputs[0].shape"),
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1]}]}, 400, "shape [2] holds 2 values"),
    ({"inputs": [{"name": "x", "datatype": "COMPLEX", "shape": [1], "data": [1]}]}, 400, "inputs[0].datatype"),
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": ["a"]}]}, 400, "finite numbers"),
    ({"features": [1, 2]}, 400, "features"),
    ({"nothing": 1}, 400, "features"),
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "parameters": {"shared_memory_region": "r"}}]},
     400, "shared-memory extension (shared_memory_region) is not supported"),
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}], "parameters": {"sequence_id": 7}},
     400, "sequence extension"),
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}], "outputs": [{"name": "label"}]},
     400, "no output 'label'"),
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1]}]}, 400, "no data"),
])
def test_a_bad_body_is_a_400_naming_the_problem(http: httpx.Client, body: dict, status: int, message: str):
    reply = http.post(f"/v2/models/{POLICY}/infer", json=body)
    assert reply.status_code == status and message in reply.json()["error"], reply.text


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"features": {"amount": 1e999}}', "Number out of range"),
    (b'{"features": {"amount": NaN}}', "malformed"),
    (b'{"features": {"amount": Infinity}}', "malformed"),
    (b'{"features": {"note": "\xff"}}', "invalid UTF-8"),
])
def test_json_the_models_could_not_read_is_a_400(http: httpx.Client, raw: bytes, message: str):
    """Python's json would take these (1e999 as inf, sent on as null); the workers would dead-letter them."""
    reply = http.post(f"/v2/models/{POLICY}/infer", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and message in reply.json()["error"], reply.text


def test_binary_tensor_data_that_does_not_fit_is_a_400_and_gzip_bodies_are_read(http: httpx.Client):
    header = b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 8}}]}'
    short = http.post(f"/v2/models/{POLICY}/infer", content=header + b"\0" * 8,
                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400 and "shape [2] needs 2 (16 bytes)" in short.json()["error"], short.text
    one = header.replace(b"[2]", b"[1]")
    unclaimed = http.post(f"/v2/models/{POLICY}/infer", content=one + b"\0" * 12,
                          headers={"Inference-Header-Content-Length": str(len(one))})
    assert unclaimed.status_code == 400 and "4 bytes of binary data" in unclaimed.json()["error"], unclaimed.text
    no_length = http.post(f"/v2/models/{POLICY}/infer", content=header + b"\xff" * 8)
    assert no_length.status_code == 400 and "Inference-Header-Content-Length" in no_length.json()["error"]
    packed = gzip.compress(b'{"id": "zipped", "features": {}}')
    zipped = http.post(f"/v2/models/{POLICY}/infer", content=packed, headers={"Content-Encoding": "gzip"})
    assert zipped.status_code == 200 and zipped.json()["id"] == "zipped", zipped.text
    bomb = http.post(f"/v2/models/{POLICY}/infer", content=gzip.compress(b" " * 2_000_000),
                     headers={"Content-Encoding": "gzip"})
    assert bomb.status_code == 413, bomb.text


def test_not_json_and_unknown_policy_are_refused_clearly(http: httpx.Client):
    reply = http.post(f"/v2/models/{POLICY}/infer", content=b"{not json", headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "error" in reply.json()
    reply = http.post("/v2/models/nope/infer", json={"features": {}})
    assert reply.status_code == 404 and f"serves policy '{POLICY}'" in reply.json()["error"]


def test_an_outcome_goes_to_its_requests_partition(served, http: httpx.Client):
    system, _ = served
    answered = http.post(f"/v2/models/{POLICY}/infer", json={"id": "truth-1", "features": {}}).json()
    assert answered["parameters"]["request_id"] == "truth-1"
    accepted = http.post(f"/v2/models/{POLICY}/outcome", json={"id": "truth-1", "outcome": True})
    assert accepted.status_code == 202, accepted.text
    partition = accepted.json()["partition"]
    [result_partition] = [m.partition() for m in system.read_topic(system.topics.results)
                          if msgspec.json.decode(m.value(), type=Result).request_id == "truth-1"]
    outcomes = [(m.partition(), msgspec.json.decode(m.value(), type=Outcome))
                for m in system.read_topic(system.topics.outcomes)]
    assert (partition, "truth-1") in [(p, o.request_id) for p, o in outcomes]
    assert partition == result_partition
    assert http.post(f"/v2/models/{POLICY}/outcome", json={"id": "x"}).status_code == 400


def test_health_metadata_and_openapi(http: httpx.Client):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/v2").json()["name"] == "rendezvous"
    meta = http.get(f"/v2/models/{POLICY}").json()
    assert meta["name"] == POLICY and meta["versions"] == ["1"] and meta["outputs"][0]["name"] == "score"
    assert set(meta["parameters"]["models"]) == {"m1", "m2", "m3"}
    assert http.get(f"/v2/models/{POLICY}/ready").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v2/models/{name}/infer", "/v2/health/ready", "/v2"} <= set(paths)


def _gateway_ids(system: System) -> list[str]:
    children = sorted((c for c in system.runtime.supervisor.children() if c.spec.labels.get("role") == "gateway"),
                      key=lambda c: c.spec.name)
    return [c.spec.argv[c.spec.argv.index("--gateway-id") + 1] for c in children]


def test_two_gateways_each_answer_their_own_callers_and_read_only_their_own_replies(served):
    system, urls = served

    def call(i: int) -> str:
        with httpx.Client(base_url=urls[i % 2], timeout=10) as client:
            reply = client.post(f"/v2/models/{POLICY}/infer", json={"id": f"pair-{i}", "features": {}})
            return reply.json()["parameters"]["request_id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(60)))
    assert answers == [f"pair-{i}" for i in range(60)]  # every caller got its own result, once
    pairs = {f"pair-{i}" for i in range(60)}
    for k, gateway_id in enumerate(_gateway_ids(system)):
        records = system.read_topic(system.topics.replies(gateway_id))
        replied = {msgspec.json.decode(m.value(), type=Result).request_id for m in records} & pairs
        assert replied == {f"pair-{i}" for i in range(60) if i % 2 == k}  # its own callers' results, no others


def test_no_worker_means_a_504_naming_the_request_after_the_sla(broker, tmp_path: Path):
    system = System(settings_for(broker), tmp_path)
    try:
        publish_policy(system.kafka, system.topics, load_policy_text(textwrap.dedent(CHAIN_POLICY)))
        gateway = system.runtime.start_gateway(extra_args=["--reply-margin-ms", "200"])
        with httpx.Client(base_url=system.url(gateway), timeout=10) as client:
            def live() -> bool:
                try:
                    return client.get("/v2/health/live").status_code == 200
                except httpx.TransportError:  # not listening yet
                    return False
            assert eventually(live, timeout=30)
            assert eventually(lambda: client.get(f"/v2/models/{POLICY}").status_code == 200, timeout=15)
            reply = client.post(f"/v2/models/{POLICY}/infer", json={"id": "nobody-home", "features": {}})
            assert reply.status_code == 504 and reply.json()["id"] == "nobody-home", reply.text
            assert client.get("/v2/health/ready").status_code == 503
            grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{client.get('/info').json()['grpc_port']}")
            row = triton_grpc.InferInput("x", [1], "FP64")
            row.set_data_from_numpy(np.array([1.0]))
            with pytest.raises(InferenceServerException, match="no result within the SLA") as late:
                grpc.infer(POLICY, [row], request_id="nobody-home-grpc")
            assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED" and not grpc.is_server_ready()
            grpc.close()
    finally:
        system.close()


@pytest.fixture(scope="module")
def guarded(served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A third gateway that knows m3's inputs (from its spec) and wants a bearer token."""
    system, _ = served
    directory = tmp_path_factory.mktemp("guarded")
    spec = scripted_spec(directory, "m3", 0.3)
    spec.write_text(spec.read_text() + "inputs: [a, b]\n")
    token = directory / "token"
    token.write_text("s3cret-token\n")
    name = system.runtime.start_gateway(name="gateway/guarded", specs=[spec], extra_args=["--token-file", str(token)])
    system.wait_ready([name])
    yield system.url(name)


def test_a_bearer_token_guards_every_route_but_health(guarded: str):
    with httpx.Client(base_url=guarded, timeout=10) as http:
        assert http.get("/v2/health/live").status_code == 200
        refused = http.post(f"/v2/models/{POLICY}/infer", json={"features": {"a": 1, "b": 2}})
        assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
        wrong = http.get(f"/v2/models/{POLICY}", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_a_feature_every_chain_model_reads_is_required_and_named(guarded: str):
    auth = {"Authorization": "Bearer s3cret-token"}
    with httpx.Client(base_url=guarded, timeout=10, headers=auth) as http:
        meta = http.get(f"/v2/models/{POLICY}").json()
        assert [i["name"] for i in meta["inputs"]] == ["a", "b"]
        missing = http.post(f"/v2/models/{POLICY}/infer", json={"features": {"a": 1}})
        assert missing.status_code == 400 and "missing feature b" in missing.json()["error"], missing.text
        assert http.post(f"/v2/models/{POLICY}/infer", json={"features": {"a": 1, "b": 2}}).status_code == 200


def test_an_oversized_body_is_a_413_and_the_gateway_counts_its_calls(http: httpx.Client):
    big = http.post(f"/v2/models/{POLICY}/infer", content=b"{" + b" " * 1_100_000 + b"}",
                    headers={"content-type": "application/json"})
    assert big.status_code == 413 and "over the limit" in big.json()["error"]
    metrics = http.get("/metrics").text
    assert 'rendezvous_gateway_requests_total{route="/v2/models/{name}/infer",status="200"}' in metrics
    assert "rendezvous_gateway_request_seconds_bucket" in metrics and "rendezvous_gateway_in_flight" in metrics


def test_every_datatype_the_models_can_take(http: httpx.Client):
    inputs = [{"name": "f16", "datatype": "FP16", "shape": [1], "data": [0.5]},
              {"name": "f32", "datatype": "FP32", "shape": [1, 1], "data": [[1.5]]},
              {"name": "i8", "datatype": "INT8", "shape": [1], "data": [-3]},
              {"name": "i64", "datatype": "INT64", "shape": [1], "data": [2**40]},
              {"name": "u8", "datatype": "UINT8", "shape": [1], "data": [7]},
              {"name": "flag", "datatype": "BOOL", "shape": [1], "data": [True]},
              {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]},
              {"name": "vec", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]
    answer = http.post(f"/v2/models/{POLICY}/infer", json={"id": "types", "inputs": inputs})
    assert answer.status_code == 200, answer.text
    assert http.post(f"/v2/models/{POLICY}/infer", json={"inputs": [
        {"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}]}).status_code == 400  # 1 is not a BOOL


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
JSON = st.recursive(SCALARS,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
BODIES = st.one_of(
    JSON,
    st.fixed_dictionaries({"inputs": st.lists(st.fixed_dictionaries(
        {"name": st.text(max_size=6), "datatype": st.sampled_from(["FP64", "BOOL", "BYTES", "INT8", "X"]),
         "shape": st.lists(st.integers(-1, 4), max_size=3), "data": st.lists(JSON, max_size=5)}), max_size=3)}),
    st.fixed_dictionaries({"features": JSON}),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_no_body_at_all_makes_the_gateway_fail(http: httpx.Client, body: object):
    """Fuzzed bodies: answered (200), refused naming the problem (4xx), or 504 after the SLA; never a 500."""
    reply = http.post(f"/v2/models/{POLICY}/infer", json=body)
    assert reply.status_code in (200, 400, 413, 504), (reply.status_code, reply.text)
    if reply.status_code >= 400:
        assert reply.json()["error"]


def test_a_reply_to_outside_the_replies_topics_is_ignored_and_counted(served):
    """Anyone can set headers: the worker writes replies only to PREFIX.replies.*, and still answers."""
    from confluent_kafka import Producer

    from rendezvous.kernel.topics import REPLY_TO
    from rendezvous.kernel.wire import encode

    system, _ = served
    worker = next(c.spec.name for c in system.runtime.supervisor.children() if c.spec.labels.get("role") == "rendezvous")
    before = system.stats(worker)["ignored_reply_to"]
    producer = Producer(system.kafka.producer())
    producer.produce(system.topics.requests, encode({"request_id": "hijack", "features": {}}), b"hijack",
                     headers=[(REPLY_TO, system.topics.results.encode())])  # not a replies topic
    assert producer.flush(10) == 0
    assert len(system.results_for(["hijack"])["hijack"]) == 1  # answered once, on the results topic only
    assert system.stats(worker)["ignored_reply_to"] == before + 1
