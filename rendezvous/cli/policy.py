"""``rendezvous policy``: validate, apply and show routing policies."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import click
import yaml

from policies import load_policy
from policies.schema import Policy
from rendezvous.kernel.admin import ensure_topics
from rendezvous.kernel.errors import ConfigError, RendezvousError
from rendezvous.kernel.options import (
    broker_option,
    kafka_settings,
    secret_option,
    stack_secret,
    topic_prefix_option,
    topics_for,
)
from rendezvous.kernel.topics import DEFAULT_PARTITIONS
from rendezvous.kernel.trust import StackSecret
from rendezvous.operations.broker import find_running, resolve_broker
from rendezvous.operations.stackfile import load_stack
from rendezvous.service.policies import publish_policy
from rendezvous.tools.inventory import policy_history, running_models, unknown_models
from rendezvous.tools.status import await_adoption

__all__ = ["policy", "validate", "apply", "show", "schema", "policy_json_schema"]


@click.group()
def policy() -> None:
    """Validate, apply and show routing policies."""


def _is_stack(path: Path) -> bool:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False  # load_policy reports it, naming the line
    return isinstance(data, dict) and "policy" in data


def _load(path: Path) -> Policy:
    return load_policy(path)


@policy.command()
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="A model the policy names that nobody runs is an error (exit 2), "
                                              "not a warning.")
@broker_option()
@topic_prefix_option
def validate(path: Path, strict: bool, broker: str | None, topic_prefix: str) -> None:
    """Check a policy or stack file; exit 2 naming file, line, field and problem if it is wrong.

    A stack file (policy: FILE, models: [...]) is checked with its policy, and every model the
    policy names must be one the stack starts. A policy alone is checked against the models running
    on the broker (--broker, or the embedded one of this machine), if there is one: a name nobody
    runs is a warning naming the close matches (`forrest`: did you mean forest?), an error with --strict.
    """
    if _is_stack(path):
        stack = load_stack(path)
        click.echo(f"{path}: valid stack: {len(stack.deploy.models)} model(s), {stack.deploy.runtime} runtime, "
                   f"policy {stack.policy_path}")
        doc = stack.policy
    else:
        doc = _load(path)
        if doc.deploy is not None:
            load_stack(path)  # the deprecated deploy section, checked as a stack
        else:
            _check_models(path, doc, broker, topic_prefix, strict)
    chain = " -> ".join(f"{e.model}" + (f" ({e.wait_ms:g} ms)" if e.wait_ms is not None else "") for e in doc.routing.chain)
    click.echo(f"{path}: valid: {doc.name} v{doc.version}, {doc.routing.strategy}, SLA {doc.sla_ms:g} ms, chain {chain}")


def _check_models(path: Path, doc: Policy, broker: str | None, topic_prefix: str, strict: bool) -> None:
    """Warn (or, strict, refuse) when the policy names a model nobody runs on the broker, if there is one."""
    bootstrap = broker or find_running()
    if bootstrap is None:
        click.echo(f"{path}: models not checked: no broker given and none running here (pass --broker to check "
                   "that every model it names runs)", err=True)
        return
    unknown = unknown_models(set(doc.model_roles), kafka_settings(bootstrap), topics_for(topic_prefix))
    if not unknown:
        return
    message = f"{path}: " + "; ".join(_nobody_runs(name, close) for name, close in unknown.items())
    if strict:
        raise ConfigError(message, hint="check the spelling, or deploy the model first")
    click.echo(f"warning: {message}", err=True)


def _nobody_runs(name: str, close: list[str]) -> str:
    return f"nobody runs a model {name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else "")


@policy.command()
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reason", default="", help="Why: recorded with the policy, shown by `policy show --history`.")
@click.option("--allow-missing", is_flag=True, envvar="RENDEZVOUS_ALLOW_MISSING", show_envvar=True,
              help="Apply even if a model it names is not running (no runner in its group, no score in the "
                   "last 5 minutes): you deploy it next.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until every running worker says it has the new version in force.")
@click.option("--timeout", type=click.FloatRange(0), default=15.0, show_default=True,
              help="Seconds --wait waits; a worker still behind then is named, and the exit code is 1.")
@broker_option()
@topic_prefix_option
@secret_option(discover=True)
def apply(path: Path, reason: str, allow_missing: bool, wait: bool, timeout: float, broker: str | None,
          topic_prefix: str, secret: StackSecret | None) -> None:
    """Put FILE in force on every worker (within a second), if valid and of a higher version.

    Refused if it names a model that has not scored recently (a typo would
    otherwise never be chosen), unless --allow-missing. Then waits until every
    running worker has adopted it (`rendezvous status` shows who has which).
    """
    doc = _load(path)
    kafka = kafka_settings(resolve_broker(broker))
    topics = topics_for(topic_prefix)
    secret = stack_secret(secret, kafka.bootstrap, topic_prefix)
    ensure_topics(kafka, topics, DEFAULT_PARTITIONS)
    current = policy_history(kafka, topics, secret)
    if current and current[-1][0].version >= doc.version:
        raise click.ClickException(f"version {doc.version} is not higher than v{current[-1][0].version} in force; "
                                   "bump `version` in the file")
    if not allow_missing:
        unknown = unknown_models(set(doc.model_roles), kafka, topics)
        if unknown:
            raise ConfigError(
                f"{path}: " + "; ".join(_nobody_runs(name, close) for name, close in unknown.items())
                + f" (none scored in the last 5 minutes, none has a replica running; running: "
                  f"{', '.join(sorted(running_models(kafka, topics))) or 'no model'})",
                hint="check the spelling, deploy the model first, or pass --allow-missing")
    publish_policy(kafka, topics, doc, reason=reason or f"applied from {path}", secret=secret,
                   allow_missing=allow_missing)
    click.echo(f"applied {doc.name} v{doc.version} to {topics.policies}" + ("" if secret else
               " (unsigned: workers given the stack's secret will refuse it; pass --secret-file)"))
    if not wait:
        return
    started = time.monotonic()
    adopted, behind = await_adoption(kafka, topics, doc.version, timeout)
    if behind:
        names = ", ".join(f"{p.instance} (v{p.details.get('policy_version')})" for p in behind)
        raise RendezvousError(f"after {timeout:g} s, {len(behind)} worker(s) still have an older version in force: "
                              f"{names}", hint="a worker given the stack's secret refuses an unsigned or wrongly "
                              "signed policy (its log and /stats say so); see `rendezvous status`")
    if adopted:
        click.echo(f"in force on {len(adopted)} worker(s) after {time.monotonic() - started:.1f} s: "
                   + ", ".join(p.instance for p in adopted))
    else:
        click.echo("no worker is running: it takes effect when one starts")


@policy.command()
@click.option("--history", is_flag=True, help="Every version applied, oldest first.")
@click.option("--json", "as_json", is_flag=True, help="The policy in force as JSON.")
@broker_option()
@topic_prefix_option
@secret_option(discover=True)
def show(history: bool, as_json: bool, broker: str | None, topic_prefix: str, secret: StackSecret | None) -> None:
    """Show the policy in force (the highest valid version on the policies topic, signed if there is a secret)."""
    kafka = kafka_settings(resolve_broker(broker))
    versions = policy_history(kafka, topics_for(topic_prefix), stack_secret(secret, kafka.bootstrap, topic_prefix))
    if not versions:
        raise click.ClickException("no policy has been applied yet")
    if history:
        for doc, record in versions:
            when = datetime.fromtimestamp(record.applied_ms / 1000).isoformat(timespec="seconds")
            click.echo(f"v{doc.version}  {when}  {record.by}  {record.reason}")
        return
    doc = versions[-1][0]
    data = doc.model_dump(mode="json", exclude_none=True)
    click.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False).rstrip())


@policy.command()
def schema() -> None:
    """Print the JSON Schema of policy files (for editors; also in policies/policy.schema.json)."""
    click.echo(json.dumps(policy_json_schema(), indent=2))


def policy_json_schema() -> dict:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Policy.model_json_schema(),
            "title": "rendezvous routing policy"}
