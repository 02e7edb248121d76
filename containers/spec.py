"""Model specs: what a model is and how to load it.

A spec names a model and its version, the Python callable that builds it, and
the artifact it loads. Paths are relative to the spec file. The model a spec
builds only needs ``predict_one(features) -> float``; ``predict_many`` is used
when present, to score a whole batch at once.

>>> spec = load_spec(EXAMPLES / "baseline.yaml")
>>> spec.name, spec.entry
('baseline', 'containers.examples.phishing:load_artifact')
>>> model, identity = load_model(spec)
>>> identity.name, len(identity.artifact_sha256 or "")
('baseline', 64)
>>> 0.0 <= model.predict_one({"https": 1.0, "long_url": 0.0}) <= 1.0
True
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rendezvous.kernel.documents import DocumentError, Problem, load_document
from rendezvous.kernel.errors import ConfigError

__all__ = [
    "EXAMPLES", "Name", "Model", "Resources", "TrainingData", "ModelCard", "ModelSpec", "ModelIdentity",
    "ModelLoadError", "load_spec", "load_card", "sha256_file", "load_model",
]

EXAMPLES = Path(__file__).parent / "examples"

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]


@runtime_checkable
class Model(Protocol):
    def predict_one(self, features: dict[str, Any]) -> float: ...


class Resources(BaseModel):
    """Limits a container replica runs under (the process runtime ignores them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: CPU cores, fractions allowed.
    cpus: Annotated[float, Field(gt=0, le=256)] = 1.0
    #: Memory limit, docker notation: ``512m``, ``2g``. Swap is not allowed on top of it.
    memory: Annotated[str, Field(pattern=r"^[1-9][0-9]*[bkmg]?$")] = "512m"
    #: Most processes and threads in the container.
    pids: Annotated[int, Field(ge=16, le=100_000)] = 256

    def memory_bytes(self) -> int:
        units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
        unit = self.memory[-1] if self.memory[-1] in units else "b"
        return int(self.memory.rstrip("bkmg")) * units[unit]


class TrainingData(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    reference: Annotated[str, Field(min_length=1)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ModelCard(BaseModel):
    """What a model registry keeps about an artifact: enough to trace and reproduce a score."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Name
    artifact_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    training_data: TrainingData
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    version: Annotated[str, Field(min_length=1, max_length=64)]
    #: ``module:callable``; called as ``callable(artifact_path_or_None, **options)``.
    entry: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    artifact: str | None = None
    #: When set, the artifact must hash to this (hex sha256) or the model refuses to load.
    artifact_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    options: dict[str, Any] = {}
    description: str = ""
    #: The request features the model reads (shown by the gateway's model metadata, checked nowhere).
    inputs: list[Annotated[str, Field(min_length=1, max_length=256)]] = []
    #: The model card (JSON or YAML), relative to the spec: the artifact's hash must match it.
    card: str | None = None

    # Deployment: how ``rendezvous deploy`` runs it as containers.
    #: Image to run; default: the runner image (``rendezvous image build``).
    image: str | None = None
    #: Or a build context (relative to the spec) whose Dockerfile starts ``FROM ${RUNNER_IMAGE}``.
    build: str | None = None
    replicas: Annotated[int, Field(ge=0, le=64)] = 1
    resources: Resources = Resources()
    #: Extra environment for the model's code (``RENDEZVOUS_*`` names are reserved).
    env: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = {}

    #: Set by :func:`load_spec`: the directory relative paths are resolved against.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _one_image_source(self) -> ModelSpec:
        if self.image and self.build:
            raise ValueError("give either image or build, not both")
        reserved = sorted(k for k in self.env if k.startswith("RENDEZVOUS_"))
        if reserved:
            raise ValueError(f"env: {', '.join(reserved)} are reserved for the runner's own options")
        return self

    def artifact_path(self) -> Path | None:
        return (self.base_dir / self.artifact).resolve() if self.artifact else None


@dataclass(frozen=True)
class ModelIdentity:
    """Who answered: written on every score record."""

    name: str
    version: str
    host: str
    instance: str
    artifact_sha256: str | None


class ModelLoadError(ConfigError):
    """A spec's model could not be built."""


def load_spec(path: str | Path) -> ModelSpec:
    path = Path(path)
    spec = load_document(path, ModelSpec)
    return spec.model_copy(update={"base_dir": path.resolve().parent})


def load_card(spec: ModelSpec) -> ModelCard | None:
    """The spec's model card, checked against the artifact it describes."""
    if spec.card is None:
        return None
    path = (spec.base_dir / spec.card).resolve()
    if not path.is_file():
        raise DocumentError(str(spec.base_dir), [Problem("card", None, f"model card {path} does not exist")])
    card = load_document(path, ModelCard)
    artifact = spec.artifact_path()
    if artifact is not None and artifact.is_file() and sha256_file(artifact) != card.artifact_sha256:
        raise ModelLoadError(f"model {spec.name}: card {path} describes artifact {card.artifact_sha256[:12]}…, "
                             f"but {artifact} hashes to {sha256_file(artifact)[:12]}…; retrain or fix the card")
    if card.name != spec.name:
        raise ModelLoadError(f"model {spec.name}: card {path} is for model {card.name!r}")
    return card


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(spec: ModelSpec, instance: str | None = None) -> tuple[Model, ModelIdentity]:
    """Build the model a spec describes, after checking its artifact."""
    artifact = spec.artifact_path()
    digest = None
    if artifact is not None:
        if not artifact.is_file():
            raise ModelLoadError(f"model {spec.name}: artifact {artifact} does not exist")
        digest = sha256_file(artifact)
        if spec.artifact_sha256 and digest != spec.artifact_sha256:
            raise ModelLoadError(
                f"model {spec.name}: artifact {artifact} has sha256 {digest}, but the spec requires "
                f"{spec.artifact_sha256}; refusing to serve a different artifact"
            )
    load_card(spec)  # a card that disagrees with the artifact is a reason not to serve
    module_name, _, attr = spec.entry.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise DocumentError(str(spec.base_dir), [Problem("entry", None, f"cannot import {spec.entry}: {exc}")]) from None
    try:
        model = factory(artifact, **spec.options)
    except TypeError as exc:
        raise ModelLoadError(f"model {spec.name}: {spec.entry} rejected its options {spec.options}: {exc}") from exc
    if not isinstance(model, Model):
        raise ModelLoadError(f"model {spec.name}: {spec.entry} returned {type(model).__name__}, which has no predict_one")
    host = socket.gethostname()
    return model, ModelIdentity(spec.name, spec.version, host, instance or f"{host}/{os.getpid()}", digest)
