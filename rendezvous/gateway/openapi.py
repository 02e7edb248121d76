"""The gateway's OpenAPI document: every status each route answers with, and the error body.

FastAPI documents what a route returns when all goes well, and a 422 that this
gateway never sends (its validation errors are 400s, in the protocol's shape).
The table below is the truth, route by route; ``tests/test_gateway.py`` calls
every route and fails on a status the document does not list.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

__all__ = ["ErrorBody", "ROUTE_ERRORS", "document"]


class ErrorBody(BaseModel):
    """Every error: the protocol's ``{"error": "..."}``; a 504 adds the request ids that had no result."""

    model_config = ConfigDict(extra="allow")

    error: str


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "model": ErrorBody}


_TOKEN = _error("The gateway has a bearer token and the call did not present it (Authorization: Bearer TOKEN)")
_NO_MODEL = _error("No policy of that name is in force")
_NO_POLICY = _error("No policy is in force yet, or the broker does not take the record")
_TOO_LARGE = _error("The body (inflated, if compressed) is over the gateway's limit")
_BAD = _error("The body is not a request the gateway can serve: the message names the field, "
              "the input or the protocol extension at fault")


def _ref(model: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model}"}


ROUTE_ERRORS: dict[str, dict[Any, Any]] = {
    "infer_body": {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"anyOf": [_ref("InferRequest"), _ref("FeaturesRequest")]}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": "The binary tensor data extension: the JSON header "
                                                    "(Inference-Header-Content-Length bytes), then the tensors"}}}},
    "infer": {
        200: {"description": "The score of every row and the rendezvous's decision; with binary outputs asked "
                             "for, the JSON header (Inference-Header-Content-Length bytes) then the tensors",
              "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        400: _BAD, 401: _TOKEN, 404: _NO_MODEL, 413: _TOO_LARGE,
        503: _error("No policy is in force yet"),
        504: _error("No result within the SLA plus the gateway's reply margin: no rendezvous worker answers"),
    },
    "outcome_body": {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref("OutcomeRequest")}}}},
    "outcome": {
        202: {"description": "Written to the outcomes topic, on the partition of the request's id"},
        400: _BAD, 401: _TOKEN, 404: _NO_MODEL, 413: _TOO_LARGE, 503: _NO_POLICY,
    },
    "live": {},
    "ready": {503: _error("The broker does not answer, no policy is in force, or no worker answers a probe")},
    "server": {401: _TOKEN},
    "metadata": {401: _TOKEN, 404: _NO_MODEL, 503: _error("No policy is in force yet")},
    "model_ready": {401: _TOKEN, 404: _NO_MODEL,
                    503: _error("No policy is in force yet, the broker does not answer, or no worker answers")},
}


def document(app: FastAPI, bodies: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    """FastAPI's document without the 422 nothing sends, plus the body schemas the routes read themselves."""
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in bodies:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return doc
