"""The Open Inference Protocol (v2) over the rendezvous: requests in, results out. Pure: no I/O.

An OIP inference request names its inputs; each input is a tensor whose first
dimension is the row. Every row becomes one rendezvous request whose features
are the inputs' values in that row; the results come back as one output,
``score``, with the rendezvous's decision in ``parameters``.

>>> body = InferRequest.model_validate({"id": "r1", "inputs": [
...     {"name": "https", "datatype": "FP64", "shape": [2], "data": [1.0, 0.0]},
...     {"name": "long_url", "datatype": "FP64", "shape": [2, 1], "data": [[0.5], [1.0]]}]})
>>> rows(body)
[{'https': 1.0, 'long_url': 0.5}, {'https': 0.0, 'long_url': 1.0}]
>>> request_ids(body.id, 2)
['r1-0', 'r1-1']
>>> rows(InferRequest.model_validate({"inputs": [{"name": "x", "datatype": "FP64", "shape": [3], "data": [1, 2]}]}))
Traceback (most recent call last):
...
rendezvous.gateway.oip.OipError: inputs[0] (x): shape [3] holds 3 values, data has 2
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rendezvous.kernel.errors import RendezvousError
from rendezvous.kernel.wire import Result

__all__ = ["InferInput", "RequestedOutput", "InferRequest", "OUTPUT", "unsupported", "binary_outputs",
           "FeaturesRequest", "OutcomeRequest", "OipError", "rows", "request_ids",
           "infer_response", "MAX_ROWS", "DATATYPES"]

MAX_ROWS = 1000
OUTPUT = "score"  # the one output a rendezvous answers with
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES")


class OipError(RendezvousError, ValueError):
    """A request body the gateway cannot turn into rendezvous requests (HTTP 400); names the input."""


class InferInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=256)]
    datatype: Literal[DATATYPES]  # type: ignore[valid-type]
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=8)]
    data: list[Any] | None = None  # None: the values follow the JSON as bytes (parameters.binary_data_size)
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=256)]
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``, as the protocol defines it (``id`` becomes the request id)."""

    model_config = ConfigDict(extra="allow")

    id: Annotated[str, Field(min_length=1, max_length=400)] | None = None
    inputs: Annotated[list[InferInput], Field(min_length=1, max_length=1024)]
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


class FeaturesRequest(BaseModel):
    """The plain alternative: one request's features as a JSON object."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=400)] | None = None
    features: dict[str, Any]


class OutcomeRequest(BaseModel):
    """``POST /v2/models/{name}/outcome``: the truth about an answered request, known later."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=512)]
    outcome: bool | float


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in data:
        if isinstance(value, list):
            out.extend(_flatten(value))
        else:
            out.append(value)
    return out


def _scalar(value: Any, datatype: str, where: str) -> Any:
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise OipError(f"{where}: BYTES values must be strings, got {type(value).__name__}")
        return value
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise OipError(f"{where}: BOOL values must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OipError(f"{where}: {datatype} values must be finite numbers, got {value!r}")
    return float(value) if datatype.startswith("FP") else int(value)


def rows(body: InferRequest) -> list[dict[str, Any]]:
    """One features dict per row; raises :class:`OipError` naming the input at fault."""
    n = body.inputs[0].shape[0]
    if not 1 <= n <= MAX_ROWS:
        raise OipError(f"inputs[0] ({body.inputs[0].name}): {n} rows; send 1 to {MAX_ROWS} per call")
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for i, tensor in enumerate(body.inputs):
        where = f"inputs[{i}] ({tensor.name})"
        if tensor.shape[0] != n:
            raise OipError(f"{where}: {tensor.shape[0]} rows, but inputs[0] has {n}; every input needs one value per row")
        if tensor.data is None:
            raise OipError(f"{where}: no data: give \"data\", or its bytes after the JSON with "
                           "parameters.binary_data_size (the binary tensor data extension)")
        values = _flatten(tensor.data)
        size = math.prod(tensor.shape)
        if len(values) != size:
            raise OipError(f"{where}: shape {tensor.shape} holds {size} values, data has {len(values)}")
        if any(row.get(tensor.name) is not None for row in out):
            raise OipError(f"{where}: the input name appears twice")
        per_row = size // n
        for r in range(n):
            cells = [_scalar(v, tensor.datatype, where) for v in values[r * per_row:(r + 1) * per_row]]
            out[r][tensor.name] = cells[0] if per_row == 1 else cells
    return out


# Parameters of protocol extensions a rendezvous does not serve, and what to do instead.
_UNSUPPORTED = {
    "shared_memory_region": "the shared-memory extension (shared_memory_region) is not supported: "
                            "send the values in the body (as data, or as binary tensor data)",
    "classification": "the classification extension (classification) is not supported: "
                      "the rendezvous answers with the chosen model's score",
    "sequence_id": "the sequence extension (sequence_id) is not supported: each row is scored on its own",
}


def unsupported(body: InferRequest) -> str | None:
    """Why the request uses something a rendezvous does not serve (a 400), or None."""
    where: list[tuple[str, dict[str, Any] | None]] = [("parameters", body.parameters)]
    where += [(f"inputs[{i}].parameters", t.parameters) for i, t in enumerate(body.inputs)]
    where += [(f"outputs[{i}].parameters", o.parameters) for i, o in enumerate(body.outputs or [])]
    for place, parameters in where:
        for key in parameters or {}:
            for name, why in _UNSUPPORTED.items():
                if key == name or key.startswith(f"{name}_"):
                    return f"{place}.{key}: {why}"
    for i, output in enumerate(body.outputs or []):
        if output.name != OUTPUT:
            return f"outputs[{i}].name: no output {output.name!r}; a rendezvous answers with one output, {OUTPUT!r}"
    return None


def binary_outputs(body: InferRequest | None) -> bool:
    """Whether the client asked for the outputs as binary tensor data (per output, else for all)."""
    if body is None:
        return False
    for output in body.outputs or []:
        if output.parameters and "binary_data" in output.parameters:
            return bool(output.parameters["binary_data"])
    return bool((body.parameters or {}).get("binary_data_output", False))


def request_ids(client_id: str | None, n: int) -> list[str]:
    """The client's id is the request id (``ID-i`` for row i of several); a fresh one otherwise."""
    base = client_id or uuid.uuid4().hex
    return [base] if n == 1 else [f"{base}-{i}" for i in range(n)]


def infer_response(policy: str, client_id: str | None, ids: list[str], results: list[Result]) -> dict[str, Any]:
    """The OIP response: the scores as output ``score``; the decision (one value, or a list per row) in parameters."""
    one = len(results) == 1

    def each(values: list[Any]) -> Any:
        return values[0] if one else values

    return {
        "model_name": policy,
        "model_version": str(results[0].policy_version),
        "id": client_id or (ids[0] if one else ids[0].rsplit("-", 1)[0]),
        "outputs": [{"name": "score", "datatype": "FP64", "shape": [len(results)], "data": [r.score for r in results]}],
        "parameters": {
            "request_id": each(ids),
            "model": each([r.model for r in results]),
            "model_version": each([r.model_version for r in results]),
            "reason": each([r.reason for r in results]),
            "detail": each([r.detail for r in results]),
            "latency_ms": each([r.latency_ms for r in results]),
            "policy_version": results[0].policy_version,
        },
    }
