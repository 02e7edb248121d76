"""``rendezvous broker`` and ``rendezvous topics``: the streams themselves."""

from __future__ import annotations

import os
from pathlib import Path

import click

from rendezvous.kernel.admin import ensure_topics
from rendezvous.kernel.errors import RendezvousError
from rendezvous.kernel.lifecycle import stop_on_signals
from rendezvous.kernel.options import (
    RendezvousGroup,
    broker_option,
    engine_option,
    kafka_settings,
    retention_option,
    topic_prefix_option,
    topics_for,
)
from rendezvous.kernel.settings import state_dir
from rendezvous.kernel.topics import DEFAULT_PARTITIONS
from rendezvous.operations.acls import apply_acls, bindings, parse_grant
from rendezvous.operations.broker import (
    BrokerError,
    embedded_broker,
    find_running,
    forget_running,
    record_running,
    resolve_broker,
)
from rendezvous.operations.kafka_broker import DEFAULT_JVM_OPTS, JVM_OPTS_ENV
from rendezvous.operations.kafka_dist import JARS_ENV, KAFKA_VERSION, fetch_jars, java_available

__all__ = ["broker", "broker_fetch", "topics", "topics_create", "topics_acls"]


@click.group(invoke_without_command=True, cls=RendezvousGroup)
@click.option("--port", type=int, default=9092, show_default=True, help="Port to listen on.")
@click.option("--listen", envvar="RENDEZVOUS_BROKER_LISTEN", show_envvar=True, default="127.0.0.1", show_default=True,
              help="Address to listen on: loopback, or 0.0.0.0 in a container (then --advertise is needed).")
@click.option("--advertise", envvar="RENDEZVOUS_BROKER_ADVERTISE", show_envvar=True, default=None,
              show_default="the --listen address", help="Host name clients are told to connect to.")
@click.option("--partitions", type=click.IntRange(1, 1024), default=DEFAULT_PARTITIONS, show_default=True,
              help="Partition count of the system's topics, created at start.")
@topic_prefix_option
@engine_option
@click.option("--data", "data_dir", envvar="RENDEZVOUS_BROKER_DATA", show_envvar=True,
              type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="$RENDEZVOUS_HOME/kafka, i.e. ~/.rendezvous/kafka",
              help="Where the Kafka engine keeps its logs, across restarts (Tansu keeps nothing).")
@retention_option
@click.option("--jvm-opts", envvar=JVM_OPTS_ENV, show_envvar=True, default=DEFAULT_JVM_OPTS, show_default=True,
              help="The Kafka engine's JVM options (heap, garbage collector).")
@click.option("--jars", "jars", envvar=JARS_ENV, show_envvar=True, type=click.Path(file_okay=False, path_type=Path),
              default=None, show_default="~/.cache/rendezvous/kafka-VERSION",
              help="Where the Kafka engine's jars are cached (`broker fetch` fills it).")
@click.pass_context
def broker(ctx: click.Context, port: int, listen: str, advertise: str | None, partitions: int, topic_prefix: str,
           engine: str, data_dir: Path | None, retention_minutes: int, jvm_opts: str, jars: Path | None) -> None:
    """Run the embedded broker on 127.0.0.1:PORT until SIGTERM (`broker fetch`: get the Kafka engine's jars).

    Other rendezvous commands on this machine find it without --broker.
    """
    if jars is not None:  # read where the jars are needed (kafka_dist.jar_dir), here and in `broker fetch`
        os.environ[JARS_ENV] = str(jars)
    if ctx.invoked_subcommand is not None:
        return
    running = find_running()
    if running:  # a second one would silently take discovery over from the first
        raise BrokerError(f"an embedded broker is already running here at {running}; the other commands use it",
                          hint="stop it first (SIGTERM), or pass --broker to talk to another one")
    stop = stop_on_signals()
    retention_ms = retention_minutes * 60_000
    embedded = embedded_broker(engine, port=port, host=listen, advertised_host=advertise,
                               data_dir=data_dir or state_dir() / "kafka", retention_ms=retention_ms, jvm_opts=jvm_opts)
    try:
        bootstrap = embedded.start()
        local = f"{embedded.local_host}:{embedded.port}"  # topics are made from here, whatever clients are told
        ensure_topics(kafka_settings(local), topics_for(topic_prefix), partitions, retention_ms=retention_ms)
    except RendezvousError:
        embedded.stop()
        raise
    record_running(embedded)
    hint = "" if embedded.engine == "kafka" else " (clients: --fetch-wait-ms 5)"
    click.echo(f"broker listening on {bootstrap} ({embedded.describe()}){hint}; stop with Ctrl-C or SIGTERM")
    try:
        while not stop.wait(0.5):
            if embedded.returncode is not None:
                raise click.ClickException(f"the {embedded.engine} broker exited with code {embedded.returncode}")
    finally:
        forget_running()
        embedded.stop()


@broker.command("fetch")
@click.option("--relock", is_flag=True, help="Write kafka/jars.lock from what Maven resolves (after changing the pom).")
def broker_fetch(relock: bool) -> None:
    """Fetch the Kafka engine's jars with Maven into the cache, each checked against the lock."""
    if not java_available():
        raise BrokerError("the Kafka engine needs Java 17 or newer, and none is installed",
                          hint="install a JDK (Debian: openjdk-17-jre-headless), or use --engine tansu")
    click.echo(f"Kafka {KAFKA_VERSION} jars in {fetch_jars(relock=relock)}")


@click.group()
def topics() -> None:
    """Manage the system's topics."""


@topics.command("create")
@broker_option()
@topic_prefix_option
@click.option("--partitions", type=click.IntRange(1, 1024), default=DEFAULT_PARTITIONS, show_default=True,
              help="Partition count of the topics it creates (existing ones are checked, not changed).")
def topics_create(broker: str | None, topic_prefix: str, partitions: int) -> None:
    """Create the system's topics (co-partitioned) where they are missing."""
    counts = ensure_topics(kafka_settings(resolve_broker(broker)), topics_for(topic_prefix), partitions)
    for name, count in counts.items():
        click.echo(f"{name}\t{count} partitions")


@topics.command("acls")
@broker_option()
@topic_prefix_option
@click.option("--grant", "grants", multiple=True, required=True, metavar="ROLE=PRINCIPAL",
              help="A role and the principal that plays it, e.g. worker=User:rendezvous-worker; repeat it. Roles: "
                   "operator, worker, model:NAME (model:* for every model), decoy, gateway, client.")
@click.option("--app-id", envvar="RENDEZVOUS_APP_ID", show_envvar=True, default=None,
              help="The workers' consumer group. Default: the topic prefix.")
@click.option("--apply", "apply_", is_flag=True, help="Create them on the broker (it must run an authorizer); "
                                                      "without it they are only printed.")
def topics_acls(broker: str | None, topic_prefix: str, grants: tuple[str, ...], app_id: str | None, apply_: bool) -> None:
    """The Kafka ACLs that let each role do only what it must (who may write the policies and the scores)."""
    granted = bindings([parse_grant(g) for g in grants], topics_for(topic_prefix), app_id)
    for principal, grant in granted:
        click.echo(f"{principal}\tALLOW\t{grant}")
    if apply_:
        count = apply_acls(kafka_settings(resolve_broker(broker)), granted)
        click.echo(f"applied {count} ACLs", err=True)
