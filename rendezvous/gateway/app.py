"""The HTTP front door: the Open Inference Protocol (v2) routes over a :class:`Front`.

JSON bodies, and the protocol's binary tensor data extension (the JSON header,
then raw tensor bytes; ``Inference-Header-Content-Length``) both ways, gzip or
deflate bodies too. Every error, unknown routes included, is the protocol's
``{"error": "..."}``, and the OpenAPI document (``/openapi.json``) lists every
status each route answers with (``tests/test_gateway.py`` walks them).
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException

from rendezvous import __version__
from rendezvous.gateway.bridge import KafkaBridge
from rendezvous.gateway.front import Front, GatewayError, GatewaySettings, field_of
from rendezvous.gateway.oip import FeaturesRequest, InferRequest, OipError, OutcomeRequest, binary_outputs
from rendezvous.gateway.openapi import ROUTE_ERRORS, document
from rendezvous.gateway.tensors import encode, split_body
from rendezvous.kernel.wire import WireError, decode_json

if TYPE_CHECKING:  # the gRPC side loads only when served: its messages' names are the protocol's, which
    # other OIP libraries (tritonclient, kserve) register too, so a process holds only one of them
    from rendezvous.gateway.grpc_service import GrpcGateway

__all__ = ["GatewaySettings", "create_app", "HEADER_LENGTH"]

HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor data extension's header
_JSON = msgspec.json.Encoder()


def create_app(bridge: KafkaBridge, settings: GatewaySettings = GatewaySettings(), *, manage_bridge: bool = True,
               front: Front | None = None, grpc: GrpcGateway | None = None,
               registry: CollectorRegistry | None = None) -> FastAPI:
    """The gateway's ASGI app; with ``manage_bridge`` it starts and stops the bridge with itself,
    and the gRPC server ``grpc`` (over the same ``front``) once the bridge runs."""
    front = front or Front(bridge, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        import asyncio

        if manage_bridge:
            bridge.start(asyncio.get_running_loop())
        if grpc is not None:
            await grpc.start()
        try:
            yield
        finally:
            if grpc is not None:
                await grpc.stop()
            if manage_bridge:
                bridge.stop()

    registry = registry or CollectorRegistry()
    app = FastAPI(title="rendezvous gateway", version=__version__, lifespan=lifespan,
                  description="The Open Inference Protocol (v2) over the rendezvous: every call is answered "
                              "within the policy's SLA (plus a margin), by the model the policy chooses.")

    calls = Counter("rendezvous_gateway_requests", "HTTP calls, by route and status", ["route", "status"],
                    registry=registry)
    seconds = Histogram("rendezvous_gateway_request_seconds", "HTTP call latency, by route", ["route"],
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=registry)
    in_flight = Gauge("rendezvous_gateway_in_flight", "HTTP calls being served", registry=registry)

    app.add_middleware(_Guard, front=front, calls=calls, seconds=seconds, in_flight=in_flight)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST.split("; charset")[0])

    @app.get("/info", include_in_schema=False)
    async def info() -> dict[str, Any]:
        return {"gateway_id": bridge.gateway_id, "reply_topic": bridge.reply_topic,
                "grpc_port": grpc.port if grpc is not None else None, "broker_problem": bridge.link.problem()}

    @app.exception_handler(GatewayError)
    async def refused(_request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException) -> JSONResponse:
        """Unknown routes and methods, in the protocol's error shape (tritonclient decodes only that)."""
        if exc.status_code == 404:
            message = f"no route {request.url.path}: the protocol's routes are under /v2 (see /openapi.json)"
        elif exc.status_code == 405:
            message = f"{request.method} is not served on {request.url.path} (see /openapi.json)"
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        return JSONResponse({"error": f"{field_of(tuple(first['loc']))}: {first['msg']}"}, status_code=400)

    # ------------------------------------------------------------------ inference

    async def body_of(request: Request) -> tuple[Any, bytes]:
        """The JSON header (whatever the content type: curl -d sends form-encoded) and any binary data after it.

        Strict JSON, as the workers read it: NaN, Infinity, numbers out of range and invalid
        UTF-8 are refused here rather than passed on."""
        raw = _inflate(await request.body(), request.headers.get("content-encoding"), settings.max_body_bytes)
        try:
            header, binary = split_body(raw, request.headers.get(HEADER_LENGTH))
        except OipError as exc:
            raise GatewayError(400, str(exc)) from None
        try:
            return decode_json(header), binary
        except WireError as exc:
            hint = "" if HEADER_LENGTH in request.headers else (
                f" (binary tensor data? send the JSON header's size in {HEADER_LENGTH})")
            raise GatewayError(400, f"the body is not JSON: {exc}{hint}") from None

    @app.post("/v2/models/{name}/infer", openapi_extra=ROUTE_ERRORS["infer_body"], responses=ROUTE_ERRORS["infer"],
              summary="Score rows through the rendezvous (OIP v2, or {\"features\": {...}})")
    async def infer(name: str, request: Request) -> Response:
        front.policy_named(name)  # 404 or 503 before reading the body
        body, binary = await body_of(request)
        parsed = front.parse(body, binary)
        answer = await front.infer(name, parsed)
        if isinstance(parsed, InferRequest) and binary_outputs(parsed):
            return _binary_response(answer)
        return Response(_JSON.encode(answer), media_type="application/json")

    @app.post("/v2/models/{name}/outcome", openapi_extra=ROUTE_ERRORS["outcome_body"],
              responses=ROUTE_ERRORS["outcome"], status_code=202,
              summary="The truth about an answered request, for learning and quality")
    async def outcome(name: str, request: Request) -> JSONResponse:
        front.policy_named(name)
        body, _ = await body_of(request)
        return JSONResponse(await front.outcome(name, body), status_code=202)

    # ------------------------------------------------------------------ health and metadata

    @app.get("/v2/health/live", summary="The gateway process is up", responses=ROUTE_ERRORS["live"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/ready", include_in_schema=False)  # what the process supervisor polls, like every component
    @app.get("/v2/health/ready", summary="The broker is reachable and a rendezvous worker answers",
             responses=ROUTE_ERRORS["ready"])
    async def ready() -> JSONResponse:
        ok, why = await front.ready()
        return JSONResponse({"ready": ok, "reason": why}, status_code=200 if ok else 503)

    @app.get("/v2", summary="Server metadata", responses=ROUTE_ERRORS["server"])
    async def server() -> dict[str, Any]:
        return front.server_metadata()

    @app.get("/v2/models/{name}", summary="The policy as a model: its versions, inputs and output",
             responses=ROUTE_ERRORS["metadata"])
    async def metadata(name: str) -> dict[str, Any]:
        return front.model_metadata(name)

    @app.get("/v2/models/{name}/ready", summary="The policy is in force and a worker answers",
             responses=ROUTE_ERRORS["model_ready"])
    async def model_ready(name: str) -> JSONResponse:
        front.policy_named(name)
        ok, why = await front.ready()
        return JSONResponse({"name": name, "ready": ok, "reason": why}, status_code=200 if ok else 503)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, (InferRequest, FeaturesRequest, OutcomeRequest))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class _Guard:
    """Bearer token and body size before any route, and every call counted and timed by its route template.

    Plain ASGI rather than FastAPI's ``@app.middleware("http")``, which runs each call through
    an extra task and memory streams: measured, that cost was a visible share of a call."""

    def __init__(self, app: Any, front: Front, calls: Counter, seconds: Histogram, in_flight: Gauge) -> None:
        self.app, self.front = app, front
        self.calls, self.seconds, self.in_flight = calls, seconds, in_flight

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight.inc()
        try:
            refusal = self._refusal(scope)
            await (refusal or self.app)(scope, receive, sending)
        finally:
            self.in_flight.dec()
            name = getattr(scope.get("route"), "path", None) or "other"  # the template: bounded labels
            self.calls.labels(name, str(status)).inc()
            self.seconds.labels(name).observe(time.perf_counter() - started)

    def _refusal(self, scope: Any) -> JSONResponse | None:
        path: str = scope["path"]
        headers = dict(scope["headers"])
        if self.front.guarded and path.startswith("/v2") and not path.startswith("/v2/health"):
            try:
                self.front.authorize(headers.get(b"authorization"), "Authorization")
            except GatewayError as exc:
                return JSONResponse(exc.body, status_code=exc.status, headers={"WWW-Authenticate": "Bearer"})
        size, limit = headers.get(b"content-length", b""), self.front.settings.max_body_bytes
        if size.isdigit() and int(size) > limit:
            return JSONResponse({"error": f"body of {size.decode()} bytes is over the limit of {limit}"}, status_code=413)
        return None


def _inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A gzip or deflate body (tritonclient's request_compression_algorithm), inflated up to ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise GatewayError(400, f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise GatewayError(400, f"the body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise GatewayError(413, f"the body inflates to over the limit of {limit} bytes")
    return out


def _binary_response(answer: dict[str, Any]) -> Response:
    """The response with its outputs as binary tensor data after the JSON header."""
    chunks = []
    for output in answer["outputs"]:
        raw = encode(output["datatype"], output.pop("data"))
        output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(raw)}
        chunks.append(raw)
    header = _JSON.encode(answer)
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})
