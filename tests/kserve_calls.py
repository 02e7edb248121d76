"""KServe's own clients against a gateway, in a process of their own (run by tests/test_oip_clients.py).

``python tests/kserve_calls.py HOST:PORT GRPC_HOST:PORT POLICY [TLS_HOST:PORT TLS_GRPC_HOST:PORT CA TOKEN]``
prints, as JSON, what the REST and the gRPC client got with their defaults: health, one call of two rows, and
the refusal of an unknown model; with the last four, also over TLS with a bearer token, and without the token.
``--compare-descriptors`` checks that the gateway's .proto has KServe's messages, fields and numbers.

KServe's and Triton's clients (and the gateway's own code) register the same protobuf names, so they
cannot share one process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _request(kserve: Any, policy: str, request_id: str, binary: bool = True) -> Any:
    """Two rows; the tensors as raw bytes (the client's default) or, with ``binary`` False, typed values."""
    fail = kserve.InferInput("m3_fail", [2], "BOOL")
    fail.set_data_from_numpy(np.array([False, True]), binary_data=binary)
    amount = kserve.InferInput("amount", [2], "FP32")
    amount.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32), binary_data=binary)
    return kserve.InferRequest(model_name=policy, infer_inputs=[fail, amount], request_id=request_id)


def _parameter(value: Any) -> Any:
    """A response parameter: a plain value over REST; over gRPC an InferParameter, lists as JSON text."""
    if hasattr(value, "WhichOneof"):
        value = getattr(value, value.WhichOneof("parameter_choice"))
    if isinstance(value, str) and value.startswith("["):
        return json.loads(value)
    return value


def _summary(response: Any) -> dict[str, Any]:
    return {"ids": _parameter(response.parameters["request_id"]), "models": _parameter(response.parameters["model"]),
            "scores": response.outputs[0].as_numpy().tolist()}


async def rest(http: str, policy: str, ca: str | None = None, token: str | None = None) -> dict[str, Any]:
    import httpx
    import kserve

    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", verify=ssl_context(ca) if ca else True))
    base = f"https://{http}" if ca else f"http://{http}"
    auth = {"Authorization": f"Bearer {token}"} if token else None
    got = {"live": await client.is_server_live(base), "ready": await client.is_server_ready(base),
           "model_ready": await client.is_model_ready(base, policy, headers=auth)}
    got.update(_summary(await client.infer(base, _request(kserve, policy, f"ks-rest{'-tls' if ca else ''}"),
                                           model_name=policy, headers=dict(auth or {}))))
    for name, headers in (("refused", auth), ("unauthenticated", None)):
        if name == "unauthenticated" and not token:
            continue
        try:
            await client.infer(base, _request(kserve, "nope" if name == "refused" else policy, "ks-rest-no"),
                               model_name="nope" if name == "refused" else policy, headers=dict(headers or {}))
        except httpx.HTTPStatusError as exc:
            got[name] = f"{exc.response.status_code} {exc.response.json()['error']}"
    await client.close()
    return got


async def grpc_calls(address: str, policy: str, ca: str | None = None, token: str | None = None) -> dict[str, Any]:
    import grpc
    import kserve

    client = kserve.InferenceGRPCClient(address, use_ssl=bool(ca), root_certificates=ca)
    auth = [("authorization", f"Bearer {token}")] if token else None
    got = {"live": await client.is_server_live(), "ready": await client.is_server_ready(),
           "model_ready": await client.is_model_ready(policy, headers=auth)}
    got.update(_summary(await client.infer(_request(kserve, policy, f"ks-grpc{'-tls' if ca else ''}"), headers=auth)))
    typed = await client.infer(_request(kserve, policy, f"ks-typed{'-tls' if ca else ''}", binary=False), headers=auth)
    got["typed"] = _summary(typed)
    for name, headers in (("refused", auth), ("unauthenticated", None)):
        if name == "unauthenticated" and not token:
            continue
        try:
            await client.infer(_request(kserve, "nope" if name == "refused" else policy, "ks-grpc-no"), headers=headers)
        except grpc.RpcError as exc:
            got[name] = f"{exc.code().name} {exc.details()}"
    await client.close()
    return got


def ssl_context(ca: str) -> Any:
    import ssl

    return ssl.create_default_context(cafile=ca)


def compare_descriptors() -> int:
    """0 when every message and field of KServe's v2 proto is in ours with the same number and type."""
    from google.protobuf import descriptor_pb2
    from kserve.protocol.grpc import grpc_predict_v2_pb2

    theirs = descriptor_pb2.FileDescriptorProto()
    grpc_predict_v2_pb2.DESCRIPTOR.CopyToProto(theirs)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO), f"--descriptor_set_out={out}",
                        "rendezvous/gateway/protocol/open_inference.proto"], check=True)
        [ours] = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file

    def fields(file: Any) -> dict[str, tuple[int, int, int, str]]:
        found = {}

        def walk(message: Any, prefix: str) -> None:
            for f in message.field:
                found[f"{prefix}{message.name}.{f.name}"] = (f.number, f.type, f.label, f.type_name)
            for nested in message.nested_type:
                walk(nested, f"{prefix}{message.name}.")
        for message in file.message_type:
            walk(message, "")
        return found

    mine, kserve = fields(ours), fields(theirs)
    served = {m.name for m in ours.service[0].method}
    differ = [f"{name}: ours {mine.get(name)}, KServe's {spec}" for name, spec in kserve.items()
              if mine.get(name) != spec and not name.startswith("Repository")]
    missing = {m.name for m in theirs.service[0].method if not m.name.startswith("Repository")} - served
    for line in differ + [f"method {m} not served" for m in sorted(missing)]:
        print(line)
    return 1 if differ or missing else 0


def main() -> int:
    if sys.argv[1:] == ["--compare-descriptors"]:
        return compare_descriptors()
    http, grpc_address, policy = sys.argv[1:4]
    out = {"rest": asyncio.run(rest(http, policy)), "grpc": asyncio.run(grpc_calls(grpc_address, policy))}
    if len(sys.argv) == 8:
        tls_http, tls_grpc, ca, token = sys.argv[4:8]
        out["tls_rest"] = asyncio.run(rest(tls_http, policy, ca, token))
        out["tls_grpc"] = asyncio.run(grpc_calls(tls_grpc, policy, ca, token))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
