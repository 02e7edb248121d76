"""The policy file: which models the rendezvous answers with, and when.

A policy is a versioned YAML document. The router reads ``sla_ms``, ``default``,
``models`` and ``routing``; ``rendezvous up`` also reads ``deploy``, which says
what to start. See ``policies/example.yaml`` and the README for the format.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rendezvous.documents import FieldError

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChainEntry(Strict):
    model: Name
    #: How long this model is waited for before the next one in the chain is accepted too.
    wait_ms: Annotated[float, Field(ge=0)] | None = None


class DefaultAnswer(Strict):
    #: The answer when no model in the chain has answered by the SLA (null: answer "no score").
    score: float | None = None


class ModelEntry(Strict):
    #: active: may be returned. shadow: scored, recorded and compared, never returned.
    role: Literal["active", "shadow"] = "active"


class FixedRouting(Strict):
    """Always prefer the first model of the chain; fall back along it."""

    strategy: Literal["fixed"]
    chain: Annotated[list[ChainEntry], Field(min_length=1)]


Routing = Annotated[FixedRouting, Field(discriminator="strategy")]


class DeployedModel(Strict):
    spec: str  # path of a model spec, relative to the policy file
    replicas: Annotated[int, Field(ge=0, le=64)] = 1


class DecoyDeploy(Strict):
    enabled: bool = True
    archive: str = ".rendezvous/archive"  # relative to the working directory


class RendezvousDeploy(Strict):
    workers: Annotated[int, Field(ge=1, le=64)] = 1


class Deploy(Strict):
    """What ``rendezvous up`` starts. The router ignores it."""

    runtime: Literal["process", "docker"] = "process"
    models: list[DeployedModel] = []
    decoy: DecoyDeploy = DecoyDeploy()
    rendezvous: RendezvousDeploy = RendezvousDeploy()


class Policy(Strict):
    name: Name
    version: Annotated[int, Field(ge=1)]
    description: str = ""
    #: Every request is answered at most this long after its timestamp.
    sla_ms: Annotated[float, Field(gt=0, le=3_600_000)]
    default: DefaultAnswer = DefaultAnswer()
    #: Models the policy names beyond its chain (e.g. shadows). Scores from unnamed models are dropped.
    models: dict[Name, ModelEntry] = {}
    routing: Routing
    deploy: Deploy | None = None

    @model_validator(mode="after")
    def _check_chain(self) -> Policy:
        chain = self.routing.chain
        seen: set[str] = set()
        for i, entry in enumerate(chain):
            if entry.model in seen:
                raise FieldError(("routing", "chain", i, "model"), f"{entry.model} appears twice in the chain")
            seen.add(entry.model)
            if self.models.get(entry.model, ModelEntry()).role == "shadow":
                raise FieldError(("routing", "chain", i, "model"), f"{entry.model} is a shadow model; shadows are never returned")
            if entry.wait_ms is None and i < len(chain) - 1:
                raise FieldError(("routing", "chain", i, "wait_ms"), "needed on every entry but the last")
        waited = sum(e.wait_ms or 0 for e in chain[:-1])
        if len(chain) > 1 and waited >= self.sla_ms:
            raise FieldError(
                ("routing", "chain", len(chain) - 2, "wait_ms"),
                f"the waits add up to {waited:g} ms, not less than sla_ms ({self.sla_ms:g}): "
                f"{chain[-1].model} could never be chosen",
            )
        return self

    @property
    def model_roles(self) -> dict[str, str]:
        """Every model the policy names, with its role."""
        roles = {e.model: "active" for e in self.routing.chain}
        roles.update({name: entry.role for name, entry in self.models.items()})
        return roles
