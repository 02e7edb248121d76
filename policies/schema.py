"""The policy file: which models the rendezvous answers with, and when.

A policy is a versioned YAML document. The router reads ``sla_ms``, ``default``,
``models`` and ``routing``; ``rendezvous up`` also reads ``deploy``, which says
what to start. See ``policies/example.yaml`` and the README for the format.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rendezvous.kernel.documents import FieldError

__all__ = [
    "Name", "Strict", "ChainEntry", "DefaultAnswer", "RampSpec", "ModelEntry", "RewardSpec", "PriorSpec",
    "ForgettingSpec", "Learning", "FixedRouting", "WeightedRouting", "EpsilonGreedyRouting", "ThompsonRouting",
    "Routing", "CanarySpec", "DeployedModel", "DecoyDeploy", "RendezvousDeploy", "Deploy", "Policy",
]

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]


class Strict(BaseModel):
    # strict: a quoted "100" is a string, not a number; YAML users get a clear error instead of a guess
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ChainEntry(Strict):
    model: Name
    #: How long this model is waited for before the next one in the chain is accepted too.
    wait_ms: Annotated[float, Field(ge=0)] | None = None


class DefaultAnswer(Strict):
    #: The answer when no model in the chain has answered by the SLA (null: answer "no score").
    score: float | None = None


class RampSpec(Strict):
    """Prefer the model for a share of requests rising by steps; roll back when a limit is passed,
    promote it when it has held its full share within them (Flagger's canary analysis)."""

    start: Annotated[float, Field(gt=0, le=1)] = 0.01
    step: Annotated[float, Field(ge=0, le=1)] = 0.05
    every_s: Annotated[float, Field(gt=0)] = 60.0
    max_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    p99_latency_ms: Annotated[float, Field(gt=0)] | None = None
    max_disagreement: Annotated[float, Field(ge=0, le=1)] | None = None  # with the champion
    max_canary_disagreement: Annotated[float, Field(ge=0, le=1)] | None = None
    min_samples: Annotated[int, Field(ge=1)] = 50
    window: Annotated[int, Field(ge=10)] = 1000
    #: Roll back when its ROC AUC on the outcomes is this much below the champion's (0.02: two points);
    #: short for max_worse_than_champion: {roc_auc: ...}.
    max_auc_shortfall: Annotated[float, Field(ge=0, le=1)] | None = None
    #: Roll back when a measure of its quality on the outcomes is worse than the champion's by more than this,
    #: e.g. {accuracy: 0.02, log_loss: 0.05}: lower is worse for accuracy and roc_auc, higher for log_loss,
    #: brier, mae and rmse (Flagger's metric checks, on the truth that arrived).
    max_worse_than_champion: dict[Literal["accuracy", "log_loss", "brier", "roc_auc", "mae", "rmse"],
                                  Annotated[float, Field(ge=0)]] = {}
    min_outcomes: Annotated[int, Field(ge=10)] = 200  # outcomes each of the two needs before they are compared
    #: Promote it when it has held max_share for every_s, within every limit, with min_outcomes judged:
    #: a new policy version makes it active, first in the chain (and the champion). false: it stays ramped.
    promote: bool = True


class ModelEntry(Strict):
    #: active: may be returned. shadow: scored, recorded, compared and credited, never returned.
    #: ramp: preferred for a rising share of requests (see ``ramp``), else like a shadow.
    role: Literal["active", "shadow", "ramp"] = "active"
    #: Only this version's scores count; others (a version being deployed or retired) are counted
    #: and ignored. Unset: any version. This is how a version swap is routed: deploy v2, pin v2, stop v1.
    version: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    #: How long this model is waited for when it is preferred but not in the chain (ramp).
    wait_ms: Annotated[float, Field(ge=0)] | None = None
    ramp: RampSpec | None = None


class RewardSpec(Strict):
    """How an outcome rewards a model's score (see rendezvous.routing.outcomes.RewardRule)."""

    kind: Literal["bernoulli", "gaussian"] = "bernoulli"
    threshold: float = 0.5  # bernoulli: a score at or above it predicts a positive outcome
    target: Literal["error", "outcome"] = "error"  # gaussian: minus the error, or the outcome itself
    credit: Literal["all", "chosen"] = "all"  # every model that scored the request, or the one returned


class PriorSpec(Strict):
    alpha: Annotated[float, Field(gt=0)] = 1.0  # bernoulli: Beta(alpha, beta)
    beta: Annotated[float, Field(gt=0)] = 1.0
    mean: float = 0.0  # gaussian: Normal-Gamma(mean, kappa, a, b)
    kappa: Annotated[float, Field(gt=0)] = 1.0
    a: Annotated[float, Field(gt=0)] = 1.0
    b: Annotated[float, Field(gt=0)] = 1.0


class ForgettingSpec(Strict):
    """How old outcomes lose weight. At most one of: half_life_s (an observation's weight halves every
    half_life_s), window_s (it counts only for window_s) or change_delta. With none (the default),
    adaptively: each model keeps every outcome since its reward last changed, detected by ADWIN at
    confidence 1 - change_delta (rendezvous.routing.bandit.Adaptive)."""

    half_life_s: Annotated[float, Field(gt=0)] | None = None
    window_s: Annotated[float, Field(gt=0)] | None = None
    change_delta: Annotated[float, Field(gt=0, lt=1)] | None = None

    @model_validator(mode="after")
    def _one(self) -> ForgettingSpec:
        given = [n for n in ("half_life_s", "window_s", "change_delta") if getattr(self, n) is not None]
        if len(given) > 1:
            raise FieldError((given[1],), f"give one of half_life_s, window_s and change_delta, not {' and '.join(given)}")
        return self

    @property
    def adaptive_delta(self) -> float | None:
        """ADWIN's delta when forgetting is adaptive (the default: 0.05), else None.

        0.05 rather than river's 0.002: ADWIN's bound is conservative, so on a stationary reward it
        still cuts its window only about twice in 300,000 observations, and it sees a change sooner
        (benchmarks/bandit.py: regret after a gradual drift 74 against 105 with 0.002)."""
        if self.half_life_s is None and self.window_s is None:
            return self.change_delta if self.change_delta is not None else 0.05
        return None


class Learning(Strict):
    """How outcomes update each model's posterior (used by every strategy, for reporting too)."""

    reward: RewardSpec = RewardSpec()
    prior: PriorSpec = PriorSpec()
    forgetting: ForgettingSpec = ForgettingSpec()  # adaptive
    outcome_horizon_s: Annotated[float, Field(gt=0)] = 86_400.0  # outcomes later than this are ignored


class _Routing(Strict):
    chain: Annotated[list[ChainEntry], Field(min_length=1)]


class FixedRouting(_Routing):
    """Always prefer the first model of the chain; fall back along it."""

    strategy: Literal["fixed"]


class WeightedRouting(_Routing):
    """Prefer each chain model for its share of requests; fall back in chain order."""

    strategy: Literal["weighted"]
    weights: dict[Name, Annotated[float, Field(ge=0)]]


class EpsilonGreedyRouting(_Routing):
    """Prefer the model with the best posterior mean, except for epsilon of requests (uniform)."""

    strategy: Literal["epsilon-greedy"]
    epsilon: Annotated[float, Field(ge=0, le=1)] = 0.1


class ThompsonRouting(_Routing):
    """Prefer the model whose posterior draw is highest; ``explore`` of requests pick uniformly."""

    strategy: Literal["thompson"]
    explore: Annotated[float, Field(ge=0, le=1)] = 0.0


Routing = Annotated[FixedRouting | WeightedRouting | EpsilonGreedyRouting | ThompsonRouting,
                    Field(discriminator="strategy")]


class CanarySpec(Strict):
    """The reference model: the champion's scores are compared with its scores on the same requests."""

    model: Name
    #: Requests whose champion and canary scores define normal, before drift is judged.
    reference: Annotated[int, Field(ge=50, le=1_000_000)] = 2000
    #: Scores the dashboards' distribution distances (KS, PSI, Wasserstein) look at.
    window: Annotated[int, Field(ge=20, le=100_000)] = 500
    #: The shift (in standard deviations) the drift test is tuned to find fastest.
    shift_sd: Annotated[float, Field(gt=0, le=5)] = 0.25
    #: Chance of a false drift alarm per 100,000 scores of a stream that does not change.
    false_alarms_per_100k: Annotated[float, Field(gt=0, lt=1)] = 0.01


class DeployedModel(Strict):
    spec: str  # path of a model spec, relative to the policy file
    replicas: Annotated[int, Field(ge=0, le=64)] | None = None  # default: the spec's replicas


class DecoyDeploy(Strict):
    enabled: bool = True
    archive: str = ".rendezvous/archive"  # relative to the working directory


class RendezvousDeploy(Strict):
    workers: Annotated[int, Field(ge=1, le=64)] = 1


class Deploy(Strict):
    """What ``rendezvous up`` starts. The router ignores it."""

    #: process: models as local processes (nothing to install); docker: as containers of the runner image.
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
    learning: Learning = Learning()
    #: The model others are compared with (ramp disagreement); default: the chain's first.
    champion: Name | None = None
    canary: CanarySpec | None = None
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
        chain_models = {e.model for e in chain}
        for name, model in self.models.items():
            where = ("models", name)
            if model.role == "ramp":
                if name in chain_models:
                    raise FieldError(where + ("role",), f"{name} is in the chain; a ramped model joins it when promoted")
                if model.ramp is None:
                    raise FieldError(where + ("ramp",), "a ramp model needs its ramp schedule and limits")
                if model.wait_ms is None:
                    raise FieldError(where + ("wait_ms",), "how long to wait for it when it is preferred")
            elif model.ramp is not None:
                raise FieldError(where + ("ramp",), f"only a model with role ramp has a ramp (this one is {model.role})")
        if isinstance(self.routing, WeightedRouting):
            for name in self.routing.weights:
                if name not in chain_models:
                    raise FieldError(("routing", "weights", name), f"{name} is not in the chain")
            if not any(self.routing.weights.values()):
                raise FieldError(("routing", "weights"), "at least one weight must be above 0")
        for field_name in ("champion",):
            value = getattr(self, field_name)
            if value is not None and value not in chain_models:
                raise FieldError((field_name,), f"{value} is not in the chain")
        if self.canary is not None and self.canary.model not in self.model_roles:
            raise FieldError(("canary", "model"), f"{self.canary.model} is not named in the chain or models")
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
