"""``rendezvous broker`` and ``rendezvous topics``: the streams themselves."""

from __future__ import annotations

import click

from rendezvous.kernel.admin import ensure_topics
from rendezvous.kernel.errors import RendezvousError
from rendezvous.kernel.lifecycle import stop_on_signals
from rendezvous.kernel.options import (
    broker_option,
    kafka_settings,
    topic_prefix_option,
    topics_for,
)
from rendezvous.kernel.topics import DEFAULT_PARTITIONS
from rendezvous.operations.broker import (
    BrokerError,
    EmbeddedBroker,
    find_running,
    forget_running,
    record_running,
    resolve_broker,
)


@click.command()
@click.option("--port", type=int, default=9092, show_default=True, help="Port to listen on (loopback only).")
@click.option("--partitions", type=click.IntRange(1, 1024), default=DEFAULT_PARTITIONS, show_default=True,
              help="Partition count of the system's topics, created at start.")
@topic_prefix_option
def broker(port: int, partitions: int, topic_prefix: str) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) on 127.0.0.1:PORT until SIGTERM.

    Other rendezvous commands on this machine find it without --broker.
    """
    running = find_running()
    if running:  # a second one would silently take discovery over from the first
        raise BrokerError(f"an embedded broker is already running here at {running}; the other commands use it",
                          hint="stop it first (SIGTERM), or pass --broker to talk to another one")
    stop = stop_on_signals()
    embedded = EmbeddedBroker(port=port)
    try:
        bootstrap = embedded.start()
        ensure_topics(kafka_settings(bootstrap), topics_for(topic_prefix), partitions)
    except RendezvousError:
        embedded.stop()
        raise
    record_running(embedded)
    click.echo(f"broker listening on {bootstrap} (Tansu, in memory); stop with Ctrl-C or SIGTERM")
    try:
        while not stop.wait(0.5):
            if embedded._process is not None and embedded._process.poll() is not None:
                raise click.ClickException(f"Tansu exited with code {embedded._process.returncode}")
    finally:
        forget_running()
        embedded.stop()


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
