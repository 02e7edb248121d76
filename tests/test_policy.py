"""Policy files: a good one loads; each kind of mistake is refused with file, line and field."""

from pathlib import Path

import pytest

from policies import EXAMPLE, EXAMPLE_STACK, load_policy, load_policy_text
from rendezvous.kernel.documents import DocumentError
from rendezvous.operations.stackfile import load_stack
from rendezvous.routing.policy import compile_policy

GOOD = """\
name: shop
version: 3
sla_ms: 100
default:
  score: 0.5
models:
  candidate:
    role: shadow
routing:
  strategy: fixed
  chain:
    - model: m3
      wait_ms: 40
    - model: m2
      wait_ms: 30
    - model: m1
"""


def refuse(text: str) -> DocumentError:
    with pytest.raises(DocumentError) as info:
        load_policy_text(text, source="shop.yaml")
    return info.value


def test_good_policy_compiles_to_its_chain():
    policy = load_policy_text(GOOD)
    routing = compile_policy(policy)
    plan = routing.plan("any", 0)
    assert [(s.model, s.opens_at_ms) for s in plan.stages] == [("m3", 0), ("m2", 40), ("m1", 70)]
    assert (plan.sla_ms, plan.default_score, plan.policy, plan.policy_version) == (100, 0.5, "shop", 3)
    assert routing.models == {"m1", "m2", "m3", "candidate"}  # a shadow's scores are kept, never returned


def test_the_shipped_example_is_valid_and_its_stack_starts_the_models_it_names():
    policy = load_policy(EXAMPLE)
    assert [e.model for e in policy.routing.chain] == ["boosted", "forest", "baseline"]
    assert policy.deploy is None  # what to run lives in the stack file, not in the published policy
    stack = load_stack(EXAMPLE_STACK)
    assert stack.policy == policy and stack.deprecation is None
    assert all(spec.is_file() for spec in stack.spec_paths())


def test_a_deploy_section_in_a_policy_still_works_with_a_deprecation(tmp_path):
    text = EXAMPLE.read_text() + (
        "deploy:\n  models:\n" + "".join(f"    - spec: {EXAMPLE.parent}/../containers/examples/{m}.yaml\n"
                                            for m in ("boosted", "forest", "baseline")))
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text(text)
    stack = load_stack(legacy)
    assert stack.deprecation and "deprecated" in stack.deprecation and len(stack.deploy.models) == 3
    from rendezvous.service.policies import policy_record
    assert b"deploy" not in policy_record(stack.policy)  # never published to the workers


@pytest.mark.parametrize(
    ("edit", "field", "line", "words"),
    [
        (("sla_ms: 100", "sla_ms: soon"), "sla_ms", 3, "valid number"),
        (("sla_ms: 100", "sla_ms: -5"), "sla_ms", 3, "greater than 0"),
        (("version: 3", "version: 0"), "version", 2, "greater than or equal to 1"),
        (("name: shop\n", ""), "name", 1, "Field required"),
        (("default:", "defualt:"), "defualt", 4, "unknown field"),
        (("strategy: fixed", "strategy: roulette"), "routing", 9, "strategy"),
        (("      wait_ms: 30", "      wait_ms: -1"), "routing.chain[1].wait_ms", 15, "greater than or equal to 0"),
        (("      wait_ms: 30\n", ""), "routing.chain[1].wait_ms", 14, "needed on every entry but the last"),
        (("    - model: m1", "    - model: m3"), "routing.chain[2].model", 16, "appears twice"),
        (("      wait_ms: 40", "      wait_ms: 90"), "routing.chain[1].wait_ms", 15, "could never be chosen"),
        (("    - model: m1", "    - model: candidate"), "routing.chain[2].model", 16, "shadow"),
        (("name: shop", "name: 'bad name!'"), "name", 1, "pattern"),
    ],
)
def test_each_mistake_is_refused_with_its_field_and_line(edit, field, line, words):
    old, new = edit
    assert old in GOOD
    error = refuse(GOOD.replace(old, new, 1))
    [problem] = error.problems
    assert problem.field == field
    assert problem.line == line
    assert words in problem.message
    assert "shop.yaml" in str(error) and field in str(error)


def test_invalid_yaml_is_refused_with_its_line():
    error = refuse("name: shop\nversion: [1\n")
    assert error.problems[0].line is not None and "not valid YAML" in error.problems[0].message


def test_a_list_at_the_top_is_refused():
    assert "expected a YAML mapping" in str(refuse("- a\n- b\n"))


def test_several_mistakes_are_reported_together():
    error = refuse(GOOD.replace("sla_ms: 100", "sla_ms: x").replace("version: 3", "version: y"))
    assert {p.field for p in error.problems} == {"sla_ms", "version"}


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(DocumentError, match="cannot read"):
        load_policy(tmp_path / "nope.yaml")


LEARNING = GOOD.replace("routing:\n  strategy: fixed\n", "routing:\n  strategy: thompson\n  explore: 0.1\n") + """\
learning:
  reward: {kind: bernoulli, threshold: 0.6}
  forgetting: {half_life_s: 600}
"""


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (LEARNING.replace("explore: 0.1", "explore: 1.5"), "routing.explore", "less than or equal to 1"),
        (LEARNING.replace("half_life_s: 600", "half_life_s: 600, window_s: 60"), "learning.forgetting.window_s",
         "not half_life_s and window_s"),
        (LEARNING.replace("half_life_s: 600", "half_life_s: 600, change_delta: 0.01"),
         "learning.forgetting.change_delta", "give one of half_life_s, window_s and change_delta"),
        (LEARNING.replace("half_life_s: 600", "change_delta: 1"), "learning.forgetting.change_delta", "less than 1"),
        (LEARNING.replace("kind: bernoulli", "kind: poisson"), "learning.reward.kind", "'bernoulli' or 'gaussian'"),
        (GOOD.replace("strategy: fixed", "strategy: weighted\n  weights: {m3: 1, m9: 2}"), "routing.weights.m9",
         "not in the chain"),
        (GOOD.replace("strategy: fixed", "strategy: weighted\n  weights: {m3: 0}"), "routing.weights",
         "above 0"),
        (GOOD.replace("role: shadow", "role: ramp"), "models.candidate.ramp", "needs its ramp schedule"),
        (GOOD.replace("role: shadow", "role: ramp\n    wait_ms: 10\n    ramp: {start: 0}"),
         "models.candidate.ramp.start", "greater than 0"),
        (GOOD.replace("role: shadow", "role: shadow\n    ramp: {}"), "models.candidate.ramp", "only a model with role ramp"),
        (GOOD + "champion: m9\n", "champion", "not in the chain"),
        (GOOD + "canary: {model: nowhere}\n", "canary.model", "not named"),
    ],
)
def test_learning_and_lifecycle_mistakes_are_named(text, field, words):
    error = refuse(text)
    assert any(p.field == field and words in p.message for p in error.problems), error.problems


def test_learning_policies_load():
    doc = load_policy_text(LEARNING)
    assert (doc.routing.strategy, doc.routing.explore, doc.learning.reward.threshold) == ("thompson", 0.1, 0.6)
    assert doc.learning.forgetting.adaptive_delta is None  # a half-life was given


def test_forgetting_is_adaptive_unless_a_policy_says_otherwise():
    doc = load_policy_text(GOOD)
    assert doc.learning.forgetting.adaptive_delta == 0.05
    assert compile_policy(doc).learner.change_delta == 0.05
    tuned = load_policy_text(GOOD + "learning:\n  forgetting: {change_delta: 0.001}\n")
    assert compile_policy(tuned).learner.change_delta == 0.001


def test_the_published_json_schema_is_current():
    import json

    from rendezvous.cli.policy import policy_json_schema
    committed = json.loads((EXAMPLE.parent / "policy.schema.json").read_text())
    assert committed == policy_json_schema(), "regenerate: rendezvous policy schema > policies/policy.schema.json"


def test_max_auc_shortfall_is_the_roc_auc_limit_of_max_worse_than_champion():
    ramped = GOOD.replace("role: shadow", "role: ramp\n    wait_ms: 10\n    ramp: {max_auc_shortfall: 0.03, "
                                          "max_worse_than_champion: {accuracy: 0.02}}")
    [ramp] = compile_policy(load_policy_text(ramped)).ramps
    assert dict(ramp.limits.max_worse) == {"accuracy": 0.02, "roc_auc": 0.03}
