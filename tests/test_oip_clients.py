"""The gateway with the clients OIP users already have, each with its defaults: Triton's (HTTP and gRPC) here,
KServe's (REST and gRPC) in a process of their own (tests/kserve_calls.py: the two libraries register the same
protobuf names, so one process holds only one of them).

Triton's HTTP client sends binary tensor data and asks for binary outputs by default; its gRPC client sends
``raw_input_contents``. Which model answered is checked against the policy by the worker's own record.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.conftest import CHAIN_POLICY, CHAIN_SCORES, REPO, System, eventually, settings_for, write_policy
from tests.rule import Chain, check
from tests.tls import Pki, make_pki

pytestmark = pytest.mark.slow
POLICY = "test-chain"
SCORES = {**CHAIN_SCORES, None: 0.25}  # None: CHAIN_POLICY's default
CHAIN = Chain((("m3", 30), ("m2", 30), ("m1", None)), sla_ms=100)
TOKEN = "oip-token-5f2a"


@dataclass
class Gateways:
    system: System
    http: str  # host:port, as the clients take it
    grpc: str
    secure_http: str  # HTTPS and gRPC over TLS, with a bearer token
    secure_grpc: str
    pki: Pki


def _trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def _info(url: str, verify: ssl.SSLContext | bool = True) -> dict:
    with httpx.Client(base_url=url, timeout=5, verify=verify) as client:
        return client.get("/info").json()


@pytest.fixture(scope="module")
def gateways(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    directory = tmp_path_factory.mktemp("oip")
    with System(settings_for(broker), directory) as s:  # closed even if the setup fails
        models = s.start_chain_models()
        workers = s.start_workers(write_policy(directory, CHAIN_POLICY))
        s.wait_ready(models + workers)
        s.warm_up()
        plain = s.runtime.start_gateway(name="gateway/plain")
        pki = make_pki(directory)
        (directory / "token").write_text(TOKEN)
        secure = s.runtime.start_gateway(name="gateway/secure", extra_args=[
            "--token-file", str(directory / "token"), "--certfile", str(pki.server_cert), "--keyfile", str(pki.server_key)])
        s.wait_ready([plain])
        http = s.url(plain).removeprefix("http://")
        assert eventually(lambda: bool(s.runtime.supervisor.get(secure).http_port), timeout=30)  # its port file
        port = s.runtime.supervisor.get(secure).http_port
        secure_url = f"https://127.0.0.1:{port}"

        def secure_is_up() -> bool:
            try:
                return httpx.get(f"{secure_url}/v2/health/live", verify=_trusting(pki.ca), timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        assert eventually(secure_is_up, timeout=30)
        yield Gateways(s, http, f"127.0.0.1:{_info(f'http://{http}')['grpc_port']}", f"127.0.0.1:{port}",
                       f"127.0.0.1:{_info(secure_url, _trusting(pki.ca))['grpc_port']}", pki)


def _rows(module, n: int, binary: bool = True) -> list:  # noqa: ANN001 - tritonclient.http or .grpc
    fail = module.InferInput("m3_fail", [n], "BOOL")
    amount = module.InferInput("amount", [n, 1], "FP32")
    values = (np.arange(n) % 2 == 1), np.arange(n, dtype=np.float32).reshape(n, 1)
    for tensor, data in zip((fail, amount), values, strict=True):
        tensor.set_data_from_numpy(data, binary_data=binary) if module is triton_http else tensor.set_data_from_numpy(data)
    return [fail, amount]


def _check_answer(system: System, ids: list[str], models: list, scores: np.ndarray) -> None:
    """Each row's answer is the one the worker recorded, and the policy's choice given when the scores came."""
    for request_id, model, score in zip(ids, models, scores, strict=True):
        result = system.result_of(request_id)
        check(result, CHAIN)
        assert result.model == model and score == pytest.approx(SCORES[model])


def test_triton_http_client_with_its_defaults(gateways: Gateways):
    client = triton_http.InferenceServerClient(gateways.http)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(POLICY)
    assert client.get_server_metadata()["name"] == "rendezvous"
    assert client.get_model_metadata(POLICY)["outputs"][0]["name"] == "score"
    one = client.infer(POLICY, _rows(triton_http, 1), request_id="th-one")  # binary in, binary out: the defaults
    assert one.get_response()["parameters"]["request_id"] == "th-one"
    _check_answer(gateways.system, ["th-one"], [one.get_response()["parameters"]["model"]], one.as_numpy("score"))
    rows = client.infer(POLICY, _rows(triton_http, 3), request_id="th-rows")
    parameters = rows.get_response()["parameters"]
    assert parameters["request_id"] == ["th-rows-0", "th-rows-1", "th-rows-2"] and parameters["model"][1] != "m3"
    _check_answer(gateways.system, parameters["request_id"], parameters["model"], rows.as_numpy("score"))
    as_json = client.infer(POLICY, _rows(triton_http, 2, binary=False),
                           outputs=[triton_http.InferRequestedOutput("score", binary_data=False)])
    assert as_json.as_numpy("score").shape == (2,)
    with pytest.raises(InferenceServerException, match="no model 'nope'") as refused:
        client.infer("nope", _rows(triton_http, 1))
    assert refused.value.status() == "404"
    with pytest.raises(InferenceServerException, match="not UTF-8 text"):
        text = triton_http.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=np.object_))
        client.infer(POLICY, [text])
    with pytest.raises(InferenceServerException, match="no route"):
        client.get_model_config(POLICY)  # not in the protocol: an error tritonclient can read, not a crash
    client.close()


def test_every_datatype_as_binary_tensor_data(gateways: Gateways):
    """The binary extension in each datatype, as Triton's client lays it out; the worker sees the values."""
    client = triton_http.InferenceServerClient(gateways.http)
    arrays = {"BOOL": np.array([True]), "UINT8": np.array([7], np.uint8), "UINT16": np.array([7], np.uint16),
              "UINT32": np.array([7], np.uint32), "UINT64": np.array([2**40], np.uint64),
              "INT8": np.array([-3], np.int8), "INT16": np.array([-3], np.int16), "INT32": np.array([-3], np.int32),
              "INT64": np.array([-2**40], np.int64), "FP16": np.array([0.5], np.float16),
              "FP32": np.array([1.5], np.float32), "FP64": np.array([2.5]),
              "BYTES": np.array(["héllo".encode()], np.object_)}
    inputs = []
    for datatype, array in arrays.items():
        tensor = triton_http.InferInput(datatype.lower(), list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    answer = client.infer(POLICY, inputs, request_id="all-types")
    assert answer.as_numpy("score").shape == (1,)
    [request] = [m for m in gateways.system.read_topic(gateways.system.topics.requests) if m.key() == b"all-types"]
    features = json.loads(request.value())["features"]
    assert features == {"bool": True, "uint8": 7, "uint16": 7, "uint32": 7, "uint64": 2**40, "int8": -3, "int16": -3,
                        "int32": -3, "int64": -2**40, "fp16": 0.5, "fp32": 1.5, "fp64": 2.5, "bytes": "héllo"}
    client.close()


def test_triton_grpc_client_with_its_defaults(gateways: Gateways):
    client = triton_grpc.InferenceServerClient(gateways.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(POLICY)
    assert client.get_server_metadata().name == "rendezvous"
    assert client.get_model_metadata(POLICY).outputs[0].name == "score"
    one = client.infer(POLICY, _rows(triton_grpc, 1), request_id="tg-one")  # raw_input_contents: the default
    response = one.get_response()
    model = response.parameters["model"].string_param or None
    _check_answer(gateways.system, ["tg-one"], [model], one.as_numpy("score"))
    rows = client.infer(POLICY, _rows(triton_grpc, 3), request_id="tg-rows")
    ids = json.loads(rows.get_response().parameters["request_id"].string_param)
    models = json.loads(rows.get_response().parameters["model"].string_param)
    assert ids == ["tg-rows-0", "tg-rows-1", "tg-rows-2"] and models[1] != "m3"
    _check_answer(gateways.system, ids, models, rows.as_numpy("score"))
    with pytest.raises(InferenceServerException, match="no model 'nope'") as refused:
        client.infer("nope", _rows(triton_grpc, 1))
    assert refused.value.status() == "StatusCode.NOT_FOUND"
    bad = triton_grpc.InferInput("x", [2], "FP64")
    bad.set_data_from_numpy(np.array([1.0, 2.0]))
    bad._raw_content = bad._raw_content[:8]  # noqa: SLF001 - a malformed call: 8 bytes for two FP64 values
    with pytest.raises(InferenceServerException, match="shape \\[2\\] needs 2") as malformed:
        client.infer(POLICY, [bad])
    assert malformed.value.status() == "StatusCode.INVALID_ARGUMENT"
    client.close()


def test_token_and_tls_on_both_transports(gateways: Gateways):
    ca = str(gateways.pki.ca)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    http = triton_http.InferenceServerClient(gateways.secure_http, ssl=True, ssl_options={"ca_certs": ca})
    assert http.is_server_live()  # health needs no token
    with pytest.raises(InferenceServerException, match="bearer token") as refused:
        http.infer(POLICY, _rows(triton_http, 1))
    assert refused.value.status() == "401"
    assert http.infer(POLICY, _rows(triton_http, 1), headers=auth).as_numpy("score").shape == (1,)
    http.close()
    grpc = triton_grpc.InferenceServerClient(gateways.secure_grpc, ssl=True, root_certificates=ca)
    assert grpc.is_server_live()
    with pytest.raises(InferenceServerException, match="bearer token") as refused:
        grpc.infer(POLICY, _rows(triton_grpc, 1))
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    assert grpc.infer(POLICY, _rows(triton_grpc, 1), headers={"authorization": f"Bearer {TOKEN}"}).as_numpy(
        "score").shape == (1,)
    grpc.close()


def test_kserve_clients_with_their_defaults_and_with_token_and_tls(gateways: Gateways):
    done = subprocess.run([sys.executable, str(REPO / "tests" / "kserve_calls.py"), gateways.http, gateways.grpc, POLICY,
                           gateways.secure_http, gateways.secure_grpc, str(gateways.pki.ca), TOKEN],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = json.loads(done.stdout)
    for transport in ("rest", "grpc", "tls_rest", "tls_grpc"):
        got = calls[transport]
        assert got["live"] and got["ready"] and got["model_ready"], got
        name = f"ks-{transport.removeprefix('tls_')}{'-tls' if transport.startswith('tls') else ''}"
        assert got["ids"] == [f"{name}-0", f"{name}-1"], got
        assert len(got["scores"]) == 2 and "no model 'nope'" in got["refused"], got
        _check_answer(gateways.system, got["ids"], got["models"], np.array(got["scores"]))
        if "grpc" in transport:  # also typed tensor contents (bool_contents, fp32_contents), answered typed
            typed = got["typed"]
            assert typed["ids"][0].startswith("ks-typed") and typed["models"][1] != "m3", typed
            _check_answer(gateways.system, typed["ids"], typed["models"], np.array(typed["scores"]))
    assert calls["tls_rest"]["unauthenticated"].startswith("401 missing or wrong bearer token")
    assert calls["tls_grpc"]["unauthenticated"].startswith("UNAUTHENTICATED missing or wrong bearer token")


def test_an_outcome_for_a_request_the_gateway_did_not_send_goes_by_its_key(gateways: Gateways):
    """A request sent over Kafka (keyed by its id): its outcome, through a gateway, lands on its partition."""
    system = gateways.system
    system.ask("sent-over-kafka", {})
    with httpx.Client(base_url=f"http://{gateways.http}", timeout=10) as client:
        sent = client.post(f"/v2/models/{POLICY}/outcome", json={"id": "sent-over-kafka", "outcome": True})
    assert sent.status_code == 202, sent.text
    assert sent.json()["partition"] == system.partition_of("sent-over-kafka") and "key" in sent.json()["placed"]


def test_the_readiness_probes_are_not_traffic(gateways: Gateways):
    """Every gateway start polls /ready, which probes the worker: never a request, a decision or a result.

    Judged by the worker's own counts: a probe that became traffic would be counted as a request and a decision
    and written as a result (and could then miss the SLA; whether real requests did here measures the machine)."""
    system = gateways.system
    [worker] = [c.spec.name for c in system.runtime.supervisor.children() if c.spec.labels.get("role") == "rendezvous"]
    stats = system.stats(worker)
    assert stats["probes_answered"] >= 1
    results = system.read_topic(system.topics.results)
    assert not [m for m in results if (m.key() or b"").startswith(b"gateway-probe-")]
    assert stats["requests"] == len(results), (stats["requests"], len(results))  # probes are not requests
    assert sum(stats["decisions"].values()) == stats["requests"] == stats["results_written"], stats


def test_the_openapi_document_lists_every_status_the_gateway_answers(gateways: Gateways):
    """Call every route well and badly; each status must be in the document, errors in the protocol's shape."""
    secure = f"https://{gateways.secure_http}"
    with httpx.Client(base_url=f"http://{gateways.http}", timeout=10) as plain, \
            httpx.Client(base_url=secure, timeout=10, verify=_trusting(gateways.pki.ca)) as guarded:
        paths = plain.get("/openapi.json").json()["paths"]
        model = f"/v2/models/{POLICY}"
        calls = [
            ("get", "/v2/health/live", "/v2/health/live", None), ("get", "/v2/health/ready", "/v2/health/ready", None),
            ("get", "/v2", "/v2", None), ("get", "/v2/models/{name}", model, None),
            ("get", "/v2/models/{name}", "/v2/models/nope", None),
            ("get", "/v2/models/{name}/ready", f"{model}/ready", None),
            ("get", "/v2/models/{name}/ready", "/v2/models/nope/ready", None),
            ("post", "/v2/models/{name}/infer", f"{model}/infer", {"features": {}}),
            ("post", "/v2/models/{name}/infer", f"{model}/infer", {"inputs": []}),
            ("post", "/v2/models/{name}/infer", "/v2/models/nope/infer", {"features": {}}),
            ("post", "/v2/models/{name}/infer", f"{model}/infer", {"features": {"pad": "x" * 1_100_000}}),
            ("post", "/v2/models/{name}/outcome", f"{model}/outcome", {"id": "a", "outcome": True}),
            ("post", "/v2/models/{name}/outcome", f"{model}/outcome", {"id": "a"}),
        ]
        seen = set()
        for client in (plain, guarded):
            for method, template, path, body in calls:
                reply = client.request(method, path, json=body) if body is not None else client.request(method, path)
                documented = paths[template][method]["responses"]
                assert str(reply.status_code) in documented, (template, method, reply.status_code, reply.text)
                if reply.status_code >= 400:
                    assert isinstance(reply.json()["error"], str)
                seen.add((template, method, reply.status_code))
        assert {("/v2/models/{name}/infer", "post", s) for s in (200, 400, 401, 404, 413)} <= seen
        assert all("422" not in operation["responses"] for ops in paths.values() for operation in ops.values())
        unknown, wrong_method = plain.get("/v1/models/x"), plain.delete(f"{model}/infer")
        assert unknown.status_code == 404 and "no route /v1/models/x" in unknown.json()["error"]
        assert wrong_method.status_code == 405 and "DELETE is not served" in wrong_method.json()["error"]


def test_grpc_form_is_generated_from_the_checked_in_proto(tmp_path: Path):
    """scripts/protos makes exactly the checked-in code; the messages match KServe's own descriptor."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "protos"), str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    generated = tmp_path / "rendezvous" / "gateway" / "protocol"
    for name in ("open_inference_pb2.py", "open_inference_pb2.pyi", "open_inference_pb2_grpc.py"):
        assert (generated / name).read_text() == (REPO / "rendezvous" / "gateway" / "protocol" / name).read_text(), name
    same = subprocess.run([sys.executable, str(REPO / "tests" / "kserve_calls.py"), "--compare-descriptors"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert same.returncode == 0, same.stdout + same.stderr
