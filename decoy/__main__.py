"""The decoy's entrypoint: ``python -m decoy --archive DIR --broker HOST:PORT``."""

from __future__ import annotations

import logging
from typing import Any

import click

from decoy.archive import DEFAULT_SEGMENT_BYTES, ArchiveWriter
from decoy.service import Decoy
from rendezvous.kernel.kafka import check_connection
from rendezvous.kernel.lifecycle import StopDeadline, configure_logging, run_off_the_main_thread, stop_on_signals
from rendezvous.kernel.options import (
    RendezvousCommand,
    broker_option,
    client_options,
    expose_env_vars,
    kafka_settings,
    log_level_option,
    stop_grace_option,
    topic_prefix_option,
    topics_for,
)
from rendezvous.kernel.presence import Announcer, status_urls, who
from rendezvous.kernel.status import StatusServer


@click.command(cls=RendezvousCommand)
@click.option("--archive", envvar="RENDEZVOUS_ARCHIVE", required=True, type=click.Path(file_okay=False),
              help="Directory of the archive (created if missing).")
@broker_option(required=True)
@topic_prefix_option
@client_options
@click.option("--group", envvar="RENDEZVOUS_DECOY_GROUP", default=None, help="Consumer group. Default: PREFIX.decoy.")
@click.option("--segment-mb", type=click.IntRange(1, 4096), default=DEFAULT_SEGMENT_BYTES // 2**20, show_default=True,
              help="Start a new segment file beyond this size.")
@click.option("--http-host", envvar="RENDEZVOUS_HTTP_HOST", default="127.0.0.1", show_default=True,
              help="Address of the status endpoint (/healthz, /ready, /metrics, /info).")
@click.option("--http-port", envvar="RENDEZVOUS_HTTP_PORT", type=int, default=0, show_default=True,
              help="Port of /healthz, /ready, /metrics; -1 disables it.")
@log_level_option
@stop_grace_option
def main(archive: str, broker: str, topic_prefix: str, fetch_wait_ms: int, producer_linger_ms: float, fetch_min_bytes: int,
         group: str | None, segment_mb: int,
         http_host: str, http_port: int, log_level: str, stop_grace_s: float) -> None:
    """Archive every request, as the models saw it, until SIGTERM."""
    configure_logging(log_level)
    stop = stop_on_signals(StopDeadline(stop_grace_s, "the decoy"))
    kafka = kafka_settings(broker, fetch_wait_ms, producer_linger_ms, fetch_min_bytes)
    check_connection(kafka)
    decoy = Decoy(kafka, topics_for(topic_prefix),
                  ArchiveWriter(archive, segment_bytes=segment_mb * 2**20), group=group)
    status = None
    if http_port >= 0:
        status = StatusServer(decoy.registry, lambda: decoy.ready, decoy.info, http_host, http_port).start()
        logging.getLogger("rendezvous.decoy").info("status endpoint on http://%s:%d", http_host, status.port)
    urls = status_urls(http_host, status.port) if status else {}

    def describe() -> tuple[dict[str, str], dict[str, Any]]:
        info = decoy.info()
        return urls, {"archive": info["archive"], "partitions": info["partitions"], "ready": decoy.ready}

    presence = Announcer(kafka, topics_for(topic_prefix), "decoy", group or "decoy", who(), describe).start()
    try:
        run_off_the_main_thread(lambda: decoy.run(stop), "decoy-loop")  # the main thread takes SIGTERM
    finally:
        presence.stop()
        if status:
            status.stop()


expose_env_vars(main)

if __name__ == "__main__":
    main()
