"""``rendezvous deploy | scale | models | stop | logs | image``: models as containers.

These commands drive the Docker engine directly and keep no state of their own
(``--broker`` is accepted by all of them, so one environment serves every command):
containers carry labels saying what they are, so any shell on the host sees
the same models. Without a Docker engine, ``models`` and ``logs`` show the
replicas that announce themselves on the stack's broker instead (the local
processes of ``rendezvous up``: see :mod:`rendezvous.kernel.presence`).
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from pathlib import Path

import click
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from rendezvous.kernel.options import (
    broker_option,
    client_options,
    kafka_settings,
    secret_option,
    stack_secret,
    stderr_console,
    topic_prefix_option,
    topics_for,
)
from rendezvous.kernel.presence import Presence, read_presence
from rendezvous.kernel.trust import StackSecret
from rendezvous.operations.base import Health, Replica, RuntimeUnavailable
from rendezvous.operations.broker import find_running, resolve_broker
from rendezvous.operations.docker import DeployError, DockerRuntime, connect
from rendezvous.operations.images import (
    DEFAULT_BASE_IMAGE,
    LOCAL_BASE_IMAGE,
    RUNNER_IMAGE,
)

__all__ = [
    "deploy", "scale", "stop", "models", "logs", "image", "image_base", "image_build", "image_kafka",
    "image_prometheus",
]


def _runtime(broker: str | None, topic_prefix: str, fetch_wait_ms: int = 5, producer_linger_ms: float = 0.0,
             fetch_min_bytes: int = 1, need_broker: bool = False, secret: StackSecret | None = None) -> DockerRuntime:
    kafka = kafka_settings(resolve_broker(broker), fetch_wait_ms, producer_linger_ms, fetch_min_bytes) if need_broker else None
    return DockerRuntime(kafka, topic_prefix, secret=secret)


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replicas", type=click.IntRange(0, 64), default=None, help="Replicas to run. Default: the spec's.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every replica consumes.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds --wait waits.")
@broker_option()
@topic_prefix_option
@client_options
@secret_option(discover=True)
def deploy(spec_path: Path, replicas: int | None, wait: bool, timeout: float, broker: str | None, topic_prefix: str,
           fetch_wait_ms: int, producer_linger_ms: float, fetch_min_bytes: int, secret: StackSecret | None) -> None:
    """Run the model SPEC as containers; deploying it again changes its replica count.

    Its scores flow into the scoring stream and are ignored until a policy names
    the model: deploy first, then route to it (`rendezvous policy apply`).
    """
    console = stderr_console()
    started = time.monotonic()
    bootstrap = resolve_broker(broker)
    runtime = _runtime(bootstrap, topic_prefix, fetch_wait_ms, producer_linger_ms, fetch_min_bytes, need_broker=True,
                       secret=stack_secret(secret, bootstrap, topic_prefix))
    names = runtime.deploy(spec_path, replicas)
    console.log(f"deployed {len(names)} replica(s): {', '.join(names) or '-'}")
    if wait and names:
        with console.status("waiting for the replicas to join the requests stream"):
            not_ready = runtime.wait_ready(names, timeout)
        if not_ready:
            raise DeployError(f"not consuming after {timeout:.0f}s: {', '.join(not_ready)}; "
                              "see `rendezvous logs MODEL`")
        console.log(f"ready in {time.monotonic() - started:.1f}s")


@click.command()
@click.argument("model")
@click.argument("replicas", type=click.IntRange(0, 64))
@click.option("--version", "version", default=None, help="The version to scale, when several are deployed.")
@broker_option()
@topic_prefix_option
def scale(model: str, replicas: int, version: str | None, broker: str | None, topic_prefix: str) -> None:
    """Run REPLICAS replicas of MODEL: new ones join its consumer group, removed ones finish their batch first."""
    names = _runtime(broker, topic_prefix, need_broker=True).scale(model, replicas, version)
    stderr_console().log(f"{model}: {len(names)} replica(s): {', '.join(names) or '-'}")


@click.command()
@click.argument("model")
@click.option("--version", "version", default=None, help="Stop only this version.")
@broker_option()
@topic_prefix_option
def stop(model: str, version: str | None, broker: str | None, topic_prefix: str) -> None:
    """Stop and remove MODEL's replicas. Policies still naming it fall back, as for any silent model."""
    names = _runtime(None, topic_prefix).stop_model(model, version)
    stderr_console().log(f"stopped {', '.join(names)}")


@click.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per replica.")
@click.option("--rate-window", type=float, default=1.0, show_default=True,
              help="Seconds over which scores/s is measured (0: skip).")
@broker_option()
@topic_prefix_option
def models(model: str | None, as_json: bool, rate_window: float, broker: str | None, topic_prefix: str) -> None:
    """List deployed model replicas: health, restarts, scores per second.

    Containers, from the Docker engine; without one, the replicas that announce themselves on the
    stack's broker (the local processes of `rendezvous up`, or runners on other hosts).
    """
    replicas = _replicas(model, broker, topic_prefix)
    rates = _score_rates(replicas, rate_window) if rate_window > 0 else {}
    quality = _quality(broker, topic_prefix)
    if as_json:
        for r in replicas:
            judged = quality.get(f"{r.model}@{r.version}") or quality.get(r.model)
            click.echo(json.dumps({**r.as_dict(), "scores_per_s": rates.get(r.name), "quality": judged}))
        return
    table = Table(title=f"models in stack {topic_prefix!r}")
    for column in ("replica", "model", "version", "health", "restarts", "scores/s", "accuracy", "AUC", "detail"):
        table.add_column(column)
    for r in replicas:
        rate, judged = rates.get(r.name), quality.get(f"{r.model}@{r.version}") or quality.get(r.model) or {}
        table.add_row(r.name, r.model, r.version, r.health, str(r.restarts), "-" if rate is None else f"{rate:.1f}",
                      _measure(judged.get("accuracy")), _measure(judged.get("roc_auc")), r.detail)
    if not replicas:
        raise click.ClickException(f"no model replicas in stack {topic_prefix!r}; deploy one with `rendezvous deploy SPEC`")
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@click.command()
@click.argument("model")
@click.option("--tail", type=click.IntRange(1), default=50, show_default=True,
              help="How many of the last log lines, per replica.")
@broker_option()
@topic_prefix_option
def logs(model: str, tail: int, broker: str | None, topic_prefix: str) -> None:
    """Print the last lines each of MODEL's replicas logged (containers; without Docker, the log files of
    the replicas `rendezvous up` runs as processes on this host)."""
    try:
        found = _runtime(None, topic_prefix).logs(model, tail)
    except RuntimeUnavailable as unavailable:
        found = _process_logs(_announced(broker, topic_prefix, unavailable), model, tail)
    if not found:
        raise click.ClickException(f"no replicas of {model}; see `rendezvous models`")
    for name, text in found.items():
        click.echo(f"==> {name} <==\n{text}")


@click.group()
def image() -> None:
    """Build the images model containers run."""


@image.command("base")
@click.option("--tag", default=LOCAL_BASE_IMAGE, show_default=True, help="Tag of the base image to build.")
@click.option("--mirror", default=None, help="Debian mirror URL for debootstrap.")
def image_base(tag: str, mirror: str | None) -> None:
    """Build a Debian + Python 3.11 base image with no registry (debootstrap, docker import; needs root)."""
    from rendezvous.operations.images import build_base_image

    console = stderr_console()
    build_base_image(connect(), tag, console.log, mirror)


@image.command("build")
@click.option("--base", default=DEFAULT_BASE_IMAGE, show_default=True,
              help=f"Base image with Python 3.11; {LOCAL_BASE_IMAGE} from `rendezvous image base` needs no registry.")
@click.option("--tag", default=RUNNER_IMAGE, show_default=True, help="Tag of the runner image to build.")
@click.option("--force", is_flag=True, help="Rebuild even if the image is current with this source tree.")
def image_build(base: str, tag: str, force: bool) -> None:
    """Build the model runner image (containers/Dockerfile) that `deploy` runs by default."""
    from rendezvous.operations.images import build_runner_image, runner_image_is_current

    console = stderr_console()
    client = connect()
    if not force and runner_image_is_current(client, tag, base):
        console.log(f"{tag} is current with this source tree (--force rebuilds it)")
        return
    build_runner_image(client, base, tag, console.log)


@image.command("kafka")
@click.option("--runner", default=RUNNER_IMAGE, show_default=True, help="The runner image to build on.")
@click.option("--tag", default=None, show_default="rendezvous/kafka:KAFKA_VERSION", help="Tag of the Kafka image.")
def image_kafka(runner: str, tag: str | None) -> None:
    """Build the embedded Kafka's image (for compose) from the runner image, this JDK and the locked jars."""
    from rendezvous.operations.images import KAFKA_IMAGE, build_kafka_image

    build_kafka_image(connect(), runner, tag or KAFKA_IMAGE, stderr_console().log)


@image.command("prometheus")
@click.option("--runner", default=RUNNER_IMAGE, show_default=True, help="The runner image to build on.")
@click.option("--tag", default=None, show_default="rendezvous/prometheus:local", help="Tag of the Prometheus image.")
def image_prometheus(runner: str, tag: str | None) -> None:
    """Build a Prometheus image (for compose) from this machine's Debian prometheus package: nothing is pulled."""
    from rendezvous.operations.images import PROMETHEUS_IMAGE, build_prometheus_image

    build_prometheus_image(connect(), runner, tag or PROMETHEUS_IMAGE, stderr_console().log)


def _quality(broker: str | None, topic_prefix: str) -> dict[str, dict[str, float]]:
    """Each model's quality on the outcomes, as a running worker measures it (found on the presence topic);
    nothing when no broker or worker is at hand."""
    bootstrap = broker or find_running()
    if bootstrap is None:
        return {}
    now = time.time() * 1000
    for p in read_presence(kafka_settings(bootstrap), topics_for(topic_prefix)):
        if p.role == "rendezvous" and p.alive(now) and "stats" in p.urls:
            try:
                with urllib.request.urlopen(p.urls["stats"], timeout=2) as reply:
                    judged = json.loads(reply.read()).get("quality", {})
            except (OSError, ValueError):
                continue
            return {m: {k: v for k, v in q.items() if v is not None} for m, q in judged.items()}
    return {}


def _measure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _announced(broker: str | None, topic_prefix: str, unavailable: RuntimeUnavailable) -> list[Presence]:
    """The models that announce themselves on the stack's broker; with none to ask, Docker's error stands."""
    bootstrap = broker or find_running()
    if bootstrap is None:
        raise unavailable
    return [p for p in read_presence(kafka_settings(bootstrap), topics_for(topic_prefix)) if p.role == "model"]


def _replicas(model: str | None, broker: str | None, topic_prefix: str) -> list[Replica]:
    """Containers from the Docker engine, else the replicas announced on the presence topic."""
    try:
        return _runtime(None, topic_prefix).replicas(model)
    except RuntimeUnavailable as unavailable:
        announced = _announced(broker, topic_prefix, unavailable)
    now = time.time() * 1000
    replicas = []
    for i, p in enumerate(a for a in announced if model in (None, a.name)):
        alive = p.alive(now)
        health: Health = ("running" if p.details.get("ready") else "starting") if alive else "stopped"
        metrics = p.urls.get("metrics")
        replicas.append(Replica(p.instance, p.name, str(p.details.get("version", "")), i, health, 0,
                                metrics.removesuffix("/metrics") if metrics else None,
                                "" if alive else f"no heartbeat for {(now - p.at_ms) / 1000:.0f} s",
                                f"{p.host}/{p.pid}"))
    return replicas


def _process_logs(announced: list[Presence], model: str, tail: int) -> dict[str, str]:
    """The last lines of the log files the model's replicas on this host announced."""
    here, found = socket.gethostname(), {}
    for p in announced:
        path = Path(p.details.get("log") or "")
        if p.name == model and p.host == here and path.is_file():
            found[p.instance] = "\n".join(path.read_text(errors="replace").splitlines()[-tail:])
    return found


def _score_rates(replicas: list[Replica], window_s: float) -> dict[str, float]:
    """Scores written per second by each running replica, from two reads of its /metrics."""
    first = {r.name: _scores_written(r.status_url) for r in replicas if r.health == "running"}
    started = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - started
    return {name: (_scores_written(next(r.status_url for r in replicas if r.name == name)) - count) / elapsed
            for name, count in first.items() if count is not None}


def _scores_written(status_url: str | None) -> float | None:
    try:
        with urllib.request.urlopen(f"{status_url}/metrics", timeout=0.5) as reply:
            text = reply.read().decode()
    except (OSError, ValueError):
        return None
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == "rendezvous_model_scores"
               for sample in family.samples if sample.name.endswith("_total"))
