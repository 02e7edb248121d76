"""The model runner's entrypoint: ``python -m containers --spec SPEC --broker HOST:PORT``.

The same command runs a model as a local process and as a container's entrypoint.
Every option can also be given as a RENDEZVOUS_* environment variable.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from containers.runner import ModelRunner, RunnerError
from containers.spec import load_model, load_spec
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
from rendezvous.kernel.presence import Announcer, status_urls
from rendezvous.kernel.status import StatusServer
from rendezvous.kernel.trust import load_key


@click.command(cls=RendezvousCommand)
@click.option("--spec", "spec_path", envvar="RENDEZVOUS_SPEC", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The model spec (YAML).")
@broker_option(required=True)
@topic_prefix_option
@client_options
@click.option("--http-host", envvar="RENDEZVOUS_HTTP_HOST", default="127.0.0.1", show_default=True,
              help="Address of the status endpoint (/healthz, /ready, /metrics).")
@click.option("--http-port", envvar="RENDEZVOUS_HTTP_PORT", type=int, default=0, show_default=True,
              help="Port of the status endpoint; 0 picks a free one, -1 disables it.")
@click.option("--max-batch", envvar="RENDEZVOUS_MAX_BATCH", type=click.IntRange(1, 100_000), default=500, show_default=True,
              help="Most requests read and scored in one go.")
@click.option("--linger-ms", envvar="RENDEZVOUS_LINGER_MS", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Longest a finished score waits for others to share its record.")
@click.option("--instance", envvar="RENDEZVOUS_INSTANCE", default=None,
              help="How scores name this replica; default HOST/PID (container runtimes set HOST/CONTAINER).")
@click.option("--score-key-file", envvar="RENDEZVOUS_SCORE_KEY_FILE", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="This model's key (readable by its owner only): every score record is signed with it, and workers "
                   "given the stack's secret refuse unsigned ones. `rendezvous up` writes one per model.")
@log_level_option
@stop_grace_option
def main(spec_path: str, broker: str, topic_prefix: str, fetch_wait_ms: int, producer_linger_ms: float, fetch_min_bytes: int,
         http_host: str, http_port: int,
         max_batch: int, linger_ms: float, instance: str | None, score_key_file: Path | None, log_level: str,
         stop_grace_s: float) -> None:
    """Run one replica of the model SPEC against the broker."""
    configure_logging(log_level)
    stop = stop_on_signals(StopDeadline(stop_grace_s, "the model runner"))
    spec = load_spec(spec_path)
    model, identity = load_model(spec, instance)
    kafka = kafka_settings(broker, fetch_wait_ms, producer_linger_ms, fetch_min_bytes)
    check_connection(kafka)
    score_key = load_key(score_key_file, "score key") if score_key_file else None
    runner = ModelRunner(model, identity, kafka, topics_for(topic_prefix), max_batch=max_batch, linger_ms=linger_ms,
                         score_key=score_key)
    status = None
    if http_port >= 0:
        status = StatusServer(runner.registry, lambda: runner.ready, runner.info, http_host, http_port).start()
        logging.getLogger("rendezvous.runner").info("status endpoint on http://%s:%d", http_host, status.port)
    urls = status_urls(http_host, status.port) if status else {}

    def describe() -> tuple[dict[str, str], dict[str, Any]]:
        info = runner.info()
        return urls, {"version": identity.version, "artifact_sha256": identity.artifact_sha256,
                      "partitions": info["partitions"], "ready": runner.ready}

    presence = Announcer(kafka, topics_for(topic_prefix), "model", identity.name, identity.instance, describe).start()
    try:
        run_off_the_main_thread(lambda: runner.run(stop), "runner-loop")  # the main thread takes SIGTERM
    except RunnerError as exc:
        logging.getLogger("rendezvous.runner").error("%s", exc)
        sys.exit(1)
    finally:
        presence.stop()
        if status:
            status.stop()


expose_env_vars(main)

if __name__ == "__main__":
    main()
