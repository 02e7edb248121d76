"""The gRPC front door: the Open Inference Protocol's ``inference.GRPCInferenceService`` over a :class:`Front`.

The same calls as HTTP, with the same messages: health, metadata and
ModelInfer, with typed tensor contents or raw ones (``raw_input_contents``; the
answer is then raw too, as Triton answers). Errors are gRPC status codes
(:data:`STATUS_CODES`) carrying the HTTP error's message; the bearer token is
the ``authorization`` metadata; TLS uses the same certificate and key.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from prometheus_client import CollectorRegistry, Counter

from rendezvous.gateway.front import Front, GatewayError
from rendezvous.gateway.oip import InferRequest, OipError
from rendezvous.gateway.protocol import open_inference_pb2 as pb
from rendezvous.gateway.protocol import open_inference_pb2_grpc as pb_grpc
from rendezvous.gateway.tensors import encode

__all__ = ["GrpcGateway", "STATUS_CODES", "DEFAULT_GRPC_PORT"]

log = logging.getLogger("rendezvous.gateway")
DEFAULT_GRPC_PORT = 8081
#: HTTP status -> gRPC status, for the same refusal on either transport.
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# The typed contents field of each datatype (FP16 has none: it travels raw).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}
R = TypeVar("R")


def _parameter(value: pb.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _set_parameter(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:  # lists (one value per row) and None: as JSON text
        target.string_param = json.dumps(value)


def infer_body(request: pb.ModelInferRequest) -> tuple[dict[str, Any], bytes]:
    """The request as the JSON form's dict, and its raw contents laid out as HTTP's binary tensor data
    (each raw input declares its ``binary_data_size``), for :meth:`Front.parse`."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise OipError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send one per input, or none")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        parameters = {k: _parameter(v) for k, v in tensor.parameters.items()}
        data = None
        if raw:
            parameters["binary_data_size"] = len(raw[i])
        elif tensor.datatype == "FP16":
            raise OipError(f"inputs[{i}] ({tensor.name}): FP16 has no typed contents field; send it in raw_input_contents")
        else:
            data = list(getattr(tensor.contents, _CONTENTS.get(tensor.datatype, "bytes_contents")))
            if tensor.datatype == "BYTES":
                try:
                    data = [b.decode() for b in data]
                except UnicodeDecodeError:
                    raise OipError(f"inputs[{i}] ({tensor.name}): a BYTES element is not UTF-8 text; "
                                   "features are JSON values") from None
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "data": data,
                       "parameters": parameters or None})
    body: dict[str, Any] = {"inputs": inputs,
                            "parameters": {k: _parameter(v) for k, v in request.parameters.items()} or None,
                            "outputs": [{"name": o.name, "parameters": {k: _parameter(v) for k, v in o.parameters.items()}}
                                        for o in request.outputs] or None}
    if request.id:
        body["id"] = request.id
    return body, b"".join(raw)


def infer_reply(answer: dict[str, Any], raw: bool) -> pb.ModelInferResponse:
    reply = pb.ModelInferResponse(model_name=answer["model_name"], model_version=answer["model_version"],
                                  id=answer["id"])
    for key, value in answer["parameters"].items():
        _set_parameter(reply.parameters[key], value)
    for output in answer["outputs"]:
        tensor = reply.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        if raw:
            reply.raw_output_contents.append(encode(output["datatype"], output["data"]))
        else:
            getattr(tensor.contents, _CONTENTS[output["datatype"]]).extend(
                float("nan") if v is None else v for v in output["data"])
    return reply


def _rpc(guarded: bool = True) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """A servicer method with the gateway's token (if ``guarded``), its errors as status codes, and counted."""
    def wrap(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(method)
        async def served(self: _Service, request: Any, context: grpc.aio.ServicerContext) -> R:
            code = grpc.StatusCode.OK
            try:
                if guarded and self.front.guarded:  # the metadata is read only when a token is wanted
                    self.front.authorize(dict(context.invocation_metadata() or ()).get("authorization"),
                                         "metadata authorization")
                return await method(self, request, context)
            except GatewayError as exc:
                code = STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN)
                await context.abort(code, exc.message)
                raise  # abort raises; this line is for the type checker
            except OipError as exc:
                code = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, str(exc))
                raise
            finally:
                self.calls.labels(method.__name__, code.name).inc()
        return served
    return wrap


class _Service(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, front: Front, calls: Counter) -> None:
        self.front, self.calls = front, calls

    @_rpc(guarded=False)
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    @_rpc(guarded=False)
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=(await self.front.ready())[0])

    @_rpc()
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        self.front.policy_named(request.name)
        return pb.ModelReadyResponse(ready=(await self.front.ready())[0])

    @_rpc()
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:  # noqa: N802
        return pb.ServerMetadataResponse(**self.front.server_metadata())

    @_rpc()
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:  # noqa: N802
        doc = self.front.model_metadata(request.name)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"], platform=doc["platform"],
                                        inputs=[tensor(**t) for t in doc["inputs"]],
                                        outputs=[tensor(**t) for t in doc["outputs"]])

    @_rpc()
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        self.front.policy_named(request.model_name)
        parsed = self.front.parse(*infer_body(request))
        assert isinstance(parsed, InferRequest)
        answer = await self.front.infer(request.model_name, parsed)
        return infer_reply(answer, raw=bool(request.raw_input_contents))


class GrpcGateway:
    """The gRPC server, on the event loop the HTTP gateway runs on: ``await start()``, ``await stop()``."""

    def __init__(self, front: Front, host: str, port: int, *, certfile: str | None = None, keyfile: str | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.front, self.host, self.port = front, host, port  # the token: the front's settings
        self.certfile, self.keyfile = certfile, keyfile
        self.calls = Counter("rendezvous_gateway_grpc_requests", "gRPC calls, by method and status code",
                             ["method", "code"], registry=registry)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the port (a free one when ``port`` is 0)."""
        limit = self.front.settings.max_body_bytes
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                          ("grpc.so_reuseport", 0)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Service(self.front, self.calls), server)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if self.certfile and self.keyfile:
            with open(self.keyfile, "rb") as key, open(self.certfile, "rb") as cert:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        log.info("gRPC (OIP) on %s:%d", self.host, self.port)
        return self.port

    async def stop(self, grace_s: float = 2.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
