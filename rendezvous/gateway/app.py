"""The HTTP front door: the Open Inference Protocol (v2) routes, over a :class:`KafkaBridge`.

``{name}`` in every route is the name of the policy in force: the deployment
is the "model" an OIP client sees; which real model answered is in the
response's ``parameters``. Because the rendezvous always answers within its
SLA, a call waits at most the SLA plus ``reply_margin_ms``; past that it is a
504 naming the request id.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import ValidationError

from rendezvous import __version__
from rendezvous.gateway.bridge import KafkaBridge
from rendezvous.gateway.oip import FeaturesRequest, InferRequest, OipError, OutcomeRequest, infer_response, request_ids, rows
from rendezvous.kernel.wire import WireError, decode_json

__all__ = ["GatewaySettings", "create_app"]


@dataclass(frozen=True)
class GatewaySettings:
    reply_margin_ms: float = 1000.0  # beyond the SLA, for the hops between the gateway and the worker
    model_inputs: dict[str, list[str]] | None = None  # model -> features it reads (from the specs)
    max_body_bytes: int = 1_048_576  # the requests topic's own limit, less the envelope
    token: str | None = None  # when set, every /v2 route but health wants "Authorization: Bearer TOKEN"


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": message, **extra}


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".") or "body"


def create_app(bridge: KafkaBridge, settings: GatewaySettings = GatewaySettings(), *, manage_bridge: bool = True) -> FastAPI:
    """The gateway's ASGI app; with ``manage_bridge`` it starts and stops the bridge with itself."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        import asyncio

        if manage_bridge:
            bridge.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            if manage_bridge:
                bridge.stop()

    registry = CollectorRegistry()
    app = FastAPI(title="rendezvous gateway", version=__version__, lifespan=lifespan,
                  description="The Open Inference Protocol (v2) over the rendezvous: every call is answered "
                              "within the policy's SLA (plus a margin), by the model the policy chooses.")

    calls = Counter("rendezvous_gateway_requests", "HTTP calls, by route and status", ["route", "status"],
                    registry=registry)
    seconds = Histogram("rendezvous_gateway_request_seconds", "HTTP call latency, by route", ["route"],
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=registry)
    in_flight = Gauge("rendezvous_gateway_in_flight", "HTTP calls being served", registry=registry)

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        in_flight.inc()
        try:
            response = await _guarded(request, call_next)
        finally:
            in_flight.dec()
        name = getattr(request.scope.get("route"), "path", None) or "other"  # the template: bounded labels
        calls.labels(name, str(response.status_code)).inc()
        seconds.labels(name).observe(time.perf_counter() - started)
        return response

    async def _guarded(request: Request, call_next: Any) -> Any:
        path = request.url.path
        if settings.token and path.startswith("/v2") and not path.startswith("/v2/health"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
                return JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > settings.max_body_bytes:
            return JSONResponse({"error": f"body of {size} bytes is over the limit of {settings.max_body_bytes}"},
                                status_code=413)
        return await call_next(request)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST.split("; charset")[0])

    @app.exception_handler(HttpError)
    async def http_error(_request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        return JSONResponse({"error": f"{_field(tuple(first['loc']))}: {first['msg']}"}, status_code=400)

    def _missing(policy: Any, rows_: list[dict[str, Any]]) -> str | None:
        """A row lacking a feature that every model of the chain reads (by their specs) could not be scored."""
        known = settings.model_inputs or {}
        chain = [e.model for e in policy.routing.chain if e.model in known]
        if not chain:
            return None
        needed = set.intersection(*(set(known[m]) for m in chain))
        for i, row in enumerate(rows_):
            absent = sorted(needed - set(row))
            if absent:
                where = f"row {i}: " if len(rows_) > 1 else ""
                return (f"{where}missing feature{'s' if len(absent) > 1 else ''} {', '.join(absent)}: "
                        f"every model of the chain ({', '.join(chain)}) reads {'them' if len(absent) > 1 else 'it'}")
        return None

    def policy_named(name: str) -> Any:
        policy = bridge.policy
        if policy is None:
            raise HttpError(503, "no policy is in force yet: apply one (rendezvous policy apply FILE)")
        if name != policy.name:
            raise HttpError(404, f"no model {name!r}: this rendezvous serves policy {policy.name!r}")
        return policy

    # ------------------------------------------------------------------ inference

    async def json_body(request: Request) -> Any:
        """The body as JSON whatever its content type (curl -d sends form-encoded), or a 400.

        Strict JSON, as the workers read it: NaN, Infinity, numbers out of range and invalid
        UTF-8 are refused here rather than passed on (Python's json would turn 1e999 into inf,
        which would reach the models as null)."""
        try:
            return decode_json(await request.body())
        except WireError as exc:
            raise HttpError(400, f"the body is not JSON: {exc}") from None

    def ref(model: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{model}"}

    infer_body = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": [
        ref("InferRequest"), ref("FeaturesRequest")]}}}}}

    @app.post("/v2/models/{name}/infer", openapi_extra=infer_body,
              summary="Score rows through the rendezvous (OIP v2, or {\"features\": {...}})")
    async def infer(name: str, request: Request) -> JSONResponse:
        policy = policy_named(name)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object: an OIP inference request or {\"features\": {...}}")
        try:
            if "inputs" in body:
                parsed = InferRequest.model_validate(body)
                features, client_id = rows(parsed), parsed.id
            else:
                plain = FeaturesRequest.model_validate(body)
                features, client_id = [plain.features], plain.id
        except ValidationError as exc:
            first = exc.errors()[0]
            raise HttpError(400, f"{_field(tuple(first['loc']))}: {first['msg']}") from None
        except OipError as exc:
            raise HttpError(400, str(exc)) from None
        missing_features = _missing(policy, features)
        if missing_features:
            raise HttpError(400, missing_features)
        ids = request_ids(client_id, len(features))
        replies = await bridge.ask(list(zip(ids, features, strict=True)),
                                   (policy.sla_ms + settings.reply_margin_ms) / 1000)
        missing = [rid for rid, reply in zip(ids, replies, strict=True) if reply is None]
        if missing:
            raise HttpError(504, f"no result within the SLA ({policy.sla_ms:g} ms) plus "
                                 f"{settings.reply_margin_ms:g} ms: is a rendezvous worker running?",
                            id=client_id or ids[0], request_ids=missing)
        results = [reply.result for reply in replies if reply is not None]
        return JSONResponse(infer_response(name, client_id, ids, results))

    outcome_body = {"requestBody": {"required": True, "content": {"application/json": {"schema": ref("OutcomeRequest")}}}}

    @app.post("/v2/models/{name}/outcome", openapi_extra=outcome_body,
              summary="The truth about an answered request, for learning and quality")
    async def outcome(name: str, request: Request) -> JSONResponse:
        policy_named(name)
        try:
            body = OutcomeRequest.model_validate(await json_body(request))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise HttpError(400, f"{_field(tuple(first['loc']))}: {first['msg']}") from None
        partition = bridge.send_outcome(body.id, body.outcome)
        if bridge.flush(5):
            raise HttpError(503, "the outcome could not be written to the broker within 5 s", id=body.id)
        return JSONResponse({"id": body.id, "accepted": True, "partition": partition}, status_code=202)

    # ------------------------------------------------------------------ health and metadata

    @app.get("/v2/health/live", summary="The gateway process is up")
    async def live() -> dict[str, bool]:
        return {"live": True}

    async def _ready() -> tuple[bool, str]:
        problem = bridge.link.problem()
        if problem:
            return False, problem
        if bridge.policy is None:
            return False, "no policy in force yet"
        if bridge.recently_answered():
            return True, "a rendezvous worker answered within the last 30 s"
        [reply] = await bridge.ask([(bridge.probe_id(), {})], (bridge.policy.sla_ms + settings.reply_margin_ms) / 1000)
        return (True, "a probe request was answered") if reply else (False, "no rendezvous worker answered a probe")

    @app.get("/ready", include_in_schema=False)  # what the process supervisor polls, like every component
    @app.get("/v2/health/ready", summary="The broker is reachable and a rendezvous worker answers")
    async def ready() -> JSONResponse:
        ok, why = await _ready()
        return JSONResponse({"ready": ok, "reason": why}, status_code=200 if ok else 503)

    @app.get("/v2", summary="Server metadata")
    async def server() -> dict[str, Any]:
        return {"name": "rendezvous", "version": __version__, "extensions": ["outcome"]}

    @app.get("/v2/models/{name}", summary="The policy as a model: its versions, inputs and output")
    async def metadata(name: str) -> dict[str, Any]:
        policy = policy_named(name)
        known = settings.model_inputs or {}
        needed = sorted({f for model in policy.model_roles for f in known.get(model, [])})
        return {
            "name": policy.name, "versions": [str(policy.version)], "platform": "rendezvous",
            "inputs": [{"name": f, "datatype": "FP64", "shape": [-1]} for f in needed],
            "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]}],
            "parameters": {"sla_ms": policy.sla_ms, "models": policy.model_roles,
                           "inputs_by_model": {m: known[m] for m in policy.model_roles if m in known}},
        }

    @app.get("/v2/models/{name}/ready", summary="The policy is in force and a worker answers")
    async def model_ready(name: str) -> JSONResponse:
        policy_named(name)
        ok, why = await _ready()
        return JSONResponse({"name": name, "ready": ok, "reason": why}, status_code=200 if ok else 503)

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the body schemas the routes read themselves (to accept any content type)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in (InferRequest, FeaturesRequest, OutcomeRequest):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
