"""The stack document: *what to run* (models, replicas, decoy, workers, runtime), apart from the
routing policy (*what to answer*), which it names.

```yaml
# policies/example.stack.yaml
policy: example.yaml            # relative to this file
runtime: process                # or docker
models:
  - spec: ../containers/examples/boosted.yaml
    replicas: 2
decoy: {archive: .rendezvous/archive}
rendezvous: {workers: 1}
```

A policy file with a ``deploy:`` section still works as a stack (one release), with a
deprecation message: the section would otherwise ride inside the policy that is
published to every worker.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "p.yaml").write_text("name: p\\nversion: 1\\nsla_ms: 100\\nrouting: {strategy: fixed, chain: [{model: m}]}\\n")
>>> _ = (d / "s.yaml").write_text("policy: p.yaml\\nmodels: [{spec: m.yaml}]\\n")
>>> stack = load_stack(d / "s.yaml")
>>> stack.policy.name, stack.deploy.runtime, stack.deprecation
('p', 'process', None)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml  # type: ignore[import-untyped]

from containers.spec import load_spec
from policies import load_policy
from policies.schema import Deploy, Policy
from rendezvous.kernel.documents import load_document
from rendezvous.kernel.errors import ConfigError

__all__ = ["StackDocument", "Stack", "load_stack", "check_deployed_models"]


class StackDocument(Deploy):
    """A stack file: the policy it runs, and the Deploy fields (runtime, models, decoy, rendezvous)."""

    policy: str  # path of the routing policy, relative to the stack file


@dataclass(frozen=True)
class Stack:
    policy: Policy
    policy_path: Path  # the file the workers start with
    deploy: Deploy
    base_dir: Path  # where the specs' relative paths start
    source: Path  # the file the user gave
    deprecation: str | None = None

    def spec_paths(self) -> list[Path]:
        return [(self.base_dir / model.spec).resolve() for model in self.deploy.models]


def load_stack(path: Path) -> Stack:
    """A stack file, or (deprecated) a policy file with a ``deploy:`` section; refused naming the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it as YAML: {exc}") from None
    if isinstance(data, dict) and "policy" in data:
        doc = load_document(path, StackDocument)
        policy_path = (path.parent / doc.policy).resolve()
        policy = load_policy(policy_path)
        deploy = Deploy.model_validate(doc.model_dump(exclude={"policy"}))
        stack = Stack(policy, policy_path, deploy, path.parent, path)
    else:
        policy = load_policy(path)
        if policy.deploy is None:
            raise ConfigError(f"{path} is a policy without a deploy section: nothing says what to start",
                              hint="give `rendezvous up` a stack file (policy: FILE, models: [...]); "
                                   "see policies/example.stack.yaml")
        stack = Stack(policy, path.resolve(), policy.deploy, path.parent, path,
                      deprecation=f"{path}: a deploy: section inside a policy is deprecated and will be refused in "
                                  "the next release: move it to a stack file (see policies/example.stack.yaml)")
    if not stack.deploy.models:
        raise ConfigError(f"{path}: models: nothing to start", hint="list at least one model spec")
    check_deployed_models(stack)
    return stack


def check_deployed_models(stack: Stack) -> None:
    """Refuse a stack that does not start every model its policy names (e.g. a typo)."""
    started = {load_spec(spec).name for spec in stack.spec_paths()}
    missing = sorted(set(stack.policy.model_roles) - started)
    if missing:
        raise ConfigError(f"{stack.source}: the policy names {', '.join(missing)}, which the stack's models do "
                          f"not start (they are {', '.join(sorted(started))})",
                          hint="check the spelling of the model names against the specs' `name:`")
