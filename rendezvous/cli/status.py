"""``rendezvous status``: every service of the stack, where it is, and the policy each worker has in force."""

from __future__ import annotations

import json
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from rendezvous.kernel.options import (
    broker_option,
    kafka_settings,
    secret_option,
    stack_secret,
    topic_prefix_option,
    topics_for,
)
from rendezvous.kernel.presence import Presence
from rendezvous.kernel.trust import StackSecret
from rendezvous.operations.broker import find_running_engine, resolve_broker
from rendezvous.tools.status import StackStatus, stack_status

__all__ = ["status"]


@click.command()
@broker_option()
@topic_prefix_option
@secret_option(discover=True)
@click.option("--json", "as_json", is_flag=True, help="Everything as one JSON object.")
def status(broker: str | None, topic_prefix: str, secret: StackSecret | None, as_json: bool) -> None:
    """What runs in this stack and where: the broker, the policy in force, every worker (its metrics URL and
    the policy version it has adopted), model replica, decoy and gateway (its HTTP and gRPC addresses).

    Read from the broker (the presence topic every service keeps its record on), so it works from any
    shell, for processes and containers alike. An instance that stopped sending its heartbeat (killed,
    or cut off from the broker) is listed as gone.
    """
    kafka = kafka_settings(resolve_broker(broker))
    topics = topics_for(topic_prefix)
    found = stack_status(kafka, topics, stack_secret(secret, kafka.bootstrap, topic_prefix))
    if as_json:
        click.echo(json.dumps(found.as_dict()))
        return
    Console(width=None if sys.stdout.isatty() else 220).print(_render(found))  # URLs whole, also in a pipe
    for worker in found.behind():
        click.echo(f"worker {worker.instance} has v{worker.details.get('policy_version')} in force, not "
                   f"v{found.policy.version if found.policy else '?'}: it adopts a new version within a second, "
                   "unless the version is refused (see its log)", err=True)


def _render(found: StackStatus) -> Table:
    embedded = find_running_engine()
    broker = found.broker + (f"  (embedded {embedded[1]}, started by `rendezvous broker` or `up`)"
                             if embedded and embedded[0] == found.broker else "")
    policy = (f"{found.policy.name} v{found.policy.version}, SLA {found.policy.sla_ms:g} ms"
              + (f", applied {_when(found.applied.applied_ms)} by {found.applied.by}" if found.applied else "")
              if found.policy else "none applied yet")
    table = Table(title=f"broker {broker}\npolicy {policy}", title_justify="left")
    for column in ("role", "name", "instance", "version / policy", "where", "state"):
        table.add_column(column, no_wrap=column in ("where", "instance"))
    if not found.instances:
        table.add_row("-", "nothing announced itself on this broker's presence topic", "", "", "", "")
    for p in found.instances:
        table.add_row(p.role, p.name, p.instance, _version(p), "\n".join(f"{k} {v}" for k, v in p.urls.items()) or "-",
                      _state(p, found.at_ms))
    return table


def _version(p: Presence) -> str:
    if p.role in ("rendezvous", "gateway"):
        version = p.details.get("policy_version")
        return f"{p.details.get('policy')} v{version}" if version is not None else "-"
    return str(p.details.get("version") or "-")


def _state(p: Presence, at_ms: float) -> str:
    if not p.alive(at_ms):
        return f"gone (last seen {(at_ms - p.at_ms) / 1000:.0f} s ago)"
    ready = "ready" if p.details.get("ready") else "not ready"
    partitions = p.details.get("partitions")
    up = _span((at_ms - p.started_ms) / 1000)
    return ready + (f", partitions {_ranges(partitions)}" if partitions else "") + f", up {up}"


def _ranges(partitions: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    out, start = [], None
    for i, p in enumerate(partitions):
        if start is None:
            start = p
        if i + 1 == len(partitions) or partitions[i + 1] != p + 1:
            out.append(f"{start}" if start == p else f"{start}-{p}")
            start = None
    return ",".join(out)


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _when(ms: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))
