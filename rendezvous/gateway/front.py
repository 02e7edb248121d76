"""What the gateway does, whatever the transport: the HTTP routes and the gRPC service both call a :class:`Front`.

``{name}`` in every call is the name of the policy in force: the deployment is
the "model" an OIP client sees; which real model answered is in the response's
``parameters``. Because the rendezvous always answers within its SLA, a call
waits at most the SLA plus ``reply_margin_ms``; past that it fails naming the
request ids. Errors are :class:`GatewayError`, with an HTTP status that the gRPC
service maps to its status codes.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rendezvous import __version__
from rendezvous.gateway.bridge import KafkaBridge
from rendezvous.gateway.oip import (
    FeaturesRequest,
    InferRequest,
    OipError,
    OutcomeRequest,
    infer_response,
    request_ids,
    rows,
    unsupported,
)
from rendezvous.gateway.tensors import attach_binary
from rendezvous.kernel.errors import RendezvousError

__all__ = ["GatewaySettings", "GatewayError", "Front", "field_of", "EXTENSIONS"]

#: The protocol extensions served (reported by server metadata); "outcome" is the rendezvous's own.
EXTENSIONS = ["binary_tensor_data", "outcome"]


@dataclass(frozen=True)
class GatewaySettings:
    reply_margin_ms: float = 1000.0  # beyond the SLA, for the hops between the gateway and the worker
    model_inputs: dict[str, list[str]] | None = None  # model -> features it reads (from the specs)
    max_body_bytes: int = 1_048_576  # the requests topic's own limit, less the envelope
    token: str | None = None  # when set, every call but health wants "Authorization: Bearer TOKEN"


class GatewayError(RendezvousError):
    """A call the gateway refuses or cannot answer: ``status`` is the HTTP status; ``body`` what the client gets."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.body = status, message, {"error": message, **extra}


def field_of(loc: tuple[Any, ...]) -> str:
    """A validation error's location as the client wrote it: ``inputs[0].shape``."""
    parts = [str(p) for p in loc if p != "body"]
    return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".") or "body"


def _invalid(exc: ValidationError) -> GatewayError:
    first = exc.errors()[0]
    return GatewayError(400, f"{field_of(tuple(first['loc']))}: {first['msg']}")


class Front:
    """The gateway's calls over a started :class:`KafkaBridge`."""

    def __init__(self, bridge: KafkaBridge, settings: GatewaySettings = GatewaySettings()) -> None:
        self.bridge, self.settings = bridge, settings
        self._bearer = f"Bearer {settings.token}".encode() if settings.token else None  # made once, not per call

    @property
    def guarded(self) -> bool:
        """Whether calls need the bearer token (see :meth:`authorize`)."""
        return self._bearer is not None

    def policy_named(self, name: str) -> Any:
        policy = self.bridge.policy
        if policy is None:
            raise GatewayError(503, "no policy is in force yet: apply one (rendezvous policy apply FILE)")
        if name != policy.name:
            raise GatewayError(404, f"no model {name!r}: this rendezvous serves policy {policy.name!r}")
        return policy

    # ------------------------------------------------------------------ inference

    @staticmethod
    def parse(body: Any, binary: bytes = b"") -> InferRequest | FeaturesRequest:
        """A decoded JSON body as an OIP request, or the plain ``{"features": {...}}``, with the tensors'
        ``binary`` data that followed it (HTTP's binary extension, gRPC's raw contents); 400 naming the field."""
        if not isinstance(body, dict):
            raise GatewayError(400, "the body must be a JSON object: an OIP inference request or {\"features\": {...}}")
        try:
            parsed = InferRequest.model_validate(body) if "inputs" in body else FeaturesRequest.model_validate(body)
        except ValidationError as exc:
            raise _invalid(exc) from None
        if binary:
            if not isinstance(parsed, InferRequest):
                raise GatewayError(400, "binary tensor data needs an OIP request with inputs, not {\"features\": ...}")
            try:
                attach_binary(parsed, binary)
            except OipError as exc:
                raise GatewayError(400, str(exc)) from None
        return parsed

    def authorize(self, given: str | bytes | None, how: str) -> None:
        """A 401 unless the gateway wants no token or ``given`` is ``Bearer TOKEN`` (compared in constant time)."""
        if self._bearer is None:
            return
        presented = given.encode() if isinstance(given, str) else given or b""
        if not hmac.compare_digest(presented, self._bearer):
            raise GatewayError(401, f"missing or wrong bearer token ({how}: Bearer TOKEN)")

    async def infer(self, name: str, request: InferRequest | FeaturesRequest) -> dict[str, Any]:
        """Score every row through the rendezvous; the OIP response (JSON form)."""
        policy = self.policy_named(name)
        try:
            if isinstance(request, InferRequest):
                problem = unsupported(request)
                if problem:
                    raise GatewayError(400, problem)
                features = rows(request)
            else:
                features = [request.features]
        except OipError as exc:
            raise GatewayError(400, str(exc)) from None
        missing_features = self._missing(policy, features)
        if missing_features:
            raise GatewayError(400, missing_features)
        ids = request_ids(request.id, len(features))
        replies = await self.bridge.ask(list(zip(ids, features, strict=True)), self._wait_s(policy))
        missing = [rid for rid, reply in zip(ids, replies, strict=True) if reply is None]
        if missing:
            raise GatewayError(504, f"no result within the SLA ({policy.sla_ms:g} ms) plus "
                                    f"{self.settings.reply_margin_ms:g} ms: is a rendezvous worker running?",
                               id=request.id or ids[0], request_ids=missing)
        return infer_response(name, request.id, ids, [reply.result for reply in replies if reply is not None])

    def _wait_s(self, policy: Any) -> float:
        return float(policy.sla_ms + self.settings.reply_margin_ms) / 1000

    def _missing(self, policy: Any, rows_: list[dict[str, Any]]) -> str | None:
        """A row lacking a feature that every model of the chain reads (by their specs) could not be scored."""
        known = self.settings.model_inputs or {}
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

    # ------------------------------------------------------------------ outcomes

    async def outcome(self, name: str, body: Any) -> dict[str, Any]:
        """Write the truth about a request to the partition its request went to; 503 if the broker does not take it."""
        self.policy_named(name)
        try:
            outcome = OutcomeRequest.model_validate(body)
        except ValidationError as exc:
            raise _invalid(exc) from None
        sent = await self.bridge.send_outcome(outcome.id, outcome.outcome, timeout_s=5.0)
        if sent is None:
            raise GatewayError(503, "the outcome could not be written to the broker within 5 s", id=outcome.id)
        partition, placed = sent
        return {"id": outcome.id, "accepted": True, "partition": partition, "placed": placed}

    # ------------------------------------------------------------------ health and metadata

    async def ready(self) -> tuple[bool, str]:
        """Whether a call would be answered now, and why (or why not)."""
        bridge = self.bridge
        problem = bridge.link.problem()
        if problem:
            return False, problem
        if bridge.policy is None:
            return False, "no policy in force yet"
        if bridge.recently_answered():
            return True, "a rendezvous worker answered within the last 30 s"
        if await bridge.probe(self._wait_s(bridge.policy)):
            return True, "a probe request was answered"
        return False, "no rendezvous worker answered a probe"

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {"name": "rendezvous", "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str) -> dict[str, Any]:
        policy = self.policy_named(name)
        known = self.settings.model_inputs or {}
        needed = sorted({f for model in policy.model_roles for f in known.get(model, [])})
        return {
            "name": policy.name, "versions": [str(policy.version)], "platform": "rendezvous",
            "inputs": [{"name": f, "datatype": "FP64", "shape": [-1]} for f in needed],
            "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]}],
            "parameters": {"sla_ms": policy.sla_ms, "models": policy.model_roles,
                           "inputs_by_model": {m: known[m] for m in policy.model_roles if m in known}},
        }
