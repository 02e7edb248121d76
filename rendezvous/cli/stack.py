"""``rendezvous up``: run what a policy file declares, until SIGTERM."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from rendezvous.kernel.errors import RendezvousError
from rendezvous.kernel.lifecycle import stop_on_signals
from rendezvous.kernel.options import (
    broker_option,
    client_config,
    engine_option,
    retention_option,
    stderr_console,
    topic_prefix_option,
)
from rendezvous.kernel.topics import DEFAULT_PARTITIONS
from rendezvous.operations.docker import DockerRuntime
from rendezvous.operations.stack import RunningStack, StackOptions, running_stack
from rendezvous.operations.stackfile import load_stack

__all__ = ["up"]


@click.command()
@click.argument("policy_path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@broker_option()
@topic_prefix_option
@click.option("--partitions", type=click.IntRange(1, 1024), default=DEFAULT_PARTITIONS, show_default=True,
              help="Partition count for topics that do not exist yet.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".rendezvous"),
              show_default=True, help="Where the components' logs and the embedded broker's data go.")
@click.option("--web-port", envvar="RENDEZVOUS_WEB_PORT", show_envvar=True, type=click.IntRange(0, 65535),
              default=6066, show_default=True,
              help="Port of the first rendezvous worker's /metrics, /stats and /ready; worker i uses PORT+i "
                   "(0: each a free one, shown at start).")
@click.option("--gateway-port", envvar="RENDEZVOUS_GATEWAY_PORT", show_envvar=True, type=click.IntRange(0, 65535),
              default=8080, show_default=True,
              help="Port of the HTTP gateway (Open Inference Protocol v2); 0: a free one, shown at start.")
@click.option("--gateway-grpc-port", envvar="RENDEZVOUS_GATEWAY_GRPC_PORT", show_envvar=True,
              type=click.IntRange(0, 65535), default=8081, show_default=True,
              help="Port of the gateway's gRPC form of the protocol (inference.GRPCInferenceService); 0: a free one.")
@click.option("--no-gateway", envvar="RENDEZVOUS_NO_GATEWAY", show_envvar=True, is_flag=True, default=False,
              help="Start no HTTP gateway (clients use Kafka only).")
@click.option("--broker-port", envvar="RENDEZVOUS_BROKER_PORT", show_envvar=True, type=click.IntRange(0, 65535),
              default=9092, show_default=True,
              help="Port of the embedded broker `up` starts when there is none (without --broker); 0: a free one.")
@engine_option
@retention_option
def up(policy_path: Path, broker: str | None, topic_prefix: str, partitions: int, workdir: Path, web_port: int,
       gateway_port: int, gateway_grpc_port: int, no_gateway: bool, broker_port: int, engine: str,
       retention_minutes: int) -> None:
    """Run the models, decoy, rendezvous workers and gateway that the stack FILE declares, until SIGTERM.

    FILE is a stack document (policy: POLICY_FILE, models: [...]; see policies/example.stack.yaml).
    Without --broker, uses the embedded broker running on this machine, or starts one on --broker-port
    (Kafka keeps its data in WORKDIR/kafka, so a restart of `up` loses nothing).
    """
    console = stderr_console()
    stop = stop_on_signals()
    declared = load_stack(policy_path)
    if declared.deprecation:
        console.log(f"[yellow]deprecated:[/] {declared.deprecation}")
    policy = declared.policy
    options = StackOptions(broker, topic_prefix, partitions, workdir / "logs", client=client_config(),
                           web_port=web_port, gateway_port=None if no_gateway else gateway_port,
                           gateway_grpc_port=gateway_grpc_port,
                           engine=engine, broker_data=workdir / "kafka", broker_port=broker_port,
                           retention_ms=retention_minutes * 60_000,
                           secret_file=workdir / "secret")
    with running_stack(options, declared, lambda kind, data: console.log(data.get("text", ""))) as stack:
        console.print(_status_table(stack, policy.name))
        gateway = f", gateway {stack.gateway_url}/v2/models/{policy.name}/infer" if stack.gateway_url else ""
        gateway += f", gRPC {stack.grpc_address}" if stack.grpc_address else ""
        metrics = "".join(f", metrics http://127.0.0.1:{child.http_port}/metrics"
                          for child in stack.runtime.supervisor.children() if child.spec.labels.get("role") == "rendezvous")
        # one line, never wrapped: scripts (and the tests) read the addresses from it
        console.print(f"up: broker {stack.kafka.bootstrap}, {_in_force(stack, policy)}{gateway}{metrics}; "
                      "stop with Ctrl-C or SIGTERM", soft_wrap=True, highlight=False, markup=False)
        _watch(stack, stop, console)


def _in_force(stack: RunningStack, policy: Any) -> str:
    """The policy the workers run, which may be a higher version from the policies topic than the file's."""
    for child in stack.runtime.supervisor.children():
        if child.spec.labels.get("role") == "rendezvous" and child.http_port:
            try:
                url = f"http://127.0.0.1:{child.http_port}/stats"
                with urllib.request.urlopen(url, timeout=5) as response:
                    running = json.loads(response.read())["policy"]
                source = "from the file" if running["version"] == policy.version else f"from {stack.topics.policies}"
                return f"policy {running['name']} v{running['version']} in force ({source})"
            except (OSError, ValueError, KeyError):
                break
    return f"policy {policy.name} v{policy.version} (file)"


def _watch(stack: RunningStack, stop: Any, console: Console) -> None:
    """Report components that go down or give up, until asked to stop."""
    reported: dict[str, str] = {}
    broker_retry_at = 0.0
    while not stop.wait(1.0):
        if time.monotonic() >= broker_retry_at:
            try:
                revived = stack.revive_broker()
                if revived:
                    console.log(f"[yellow]{revived}[/]")
            except RendezvousError as exc:
                broker_retry_at = time.monotonic() + 5.0
                console.log(f"[red]the embedded broker could not be started again:[/] {exc} (trying again in 5 s)")
        for child in stack.runtime.supervisor.children():
            if child.state != reported.get(child.spec.name, "running"):
                console.log(f"{child.spec.name}: {child.state} (restarts {child.restarts}, last exit {child.last_exit_code})")
            reported[child.spec.name] = child.state
        if isinstance(stack.models, DockerRuntime):
            for replica in stack.models.replicas():
                if replica.health != reported.get(replica.name, "running"):
                    console.log(f"{replica.name}: {replica.health} (restarts {replica.restarts}) {replica.detail}")
                reported[replica.name] = replica.health


def _status_table(stack: RunningStack, name: str) -> Table:
    table = Table(title=f"rendezvous up — {name}")
    for column in ("component", "pid", "status endpoint", "state"):
        table.add_column(column)
    for child in stack.runtime.supervisor.children():
        port = child.http_port
        table.add_row(child.spec.name, str(child.pid), f"http://127.0.0.1:{port}" if port else "-", child.state)
    if isinstance(stack.models, DockerRuntime):
        for replica in stack.models.replicas():
            table.add_row(f"{replica.name} (container)", replica.engine_id, replica.status_url or "-", replica.health)
    return table
