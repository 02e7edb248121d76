"""``rendezvous serve``: one rendezvous worker."""

from __future__ import annotations

from pathlib import Path

import click

from rendezvous.admin import TopicError
from rendezvous.broker import BrokerError, resolve_broker
from rendezvous.cli.options import (
    broker_option, fetch_wait_option, kafka_settings, log_level_option, topic_prefix_option, topics_for,
)
from rendezvous.documents import DocumentError
from rendezvous.service.run import ServiceError, build_worker, run_worker
from rendezvous.service.worker import ServiceSettings


@click.command()
@click.option("--policy", "policy_path", envvar="RENDEZVOUS_POLICY", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="The routing policy (YAML).")
@broker_option()
@topic_prefix_option
@fetch_wait_option
@click.option("--app-id", envvar="RENDEZVOUS_APP_ID", default="rendezvous", show_default=True,
              help="Consumer group shared by the workers of one deployment.")
@click.option("--worker-id", envvar="RENDEZVOUS_WORKER_ID", default=None, help="Name written on results. Default: host/pid.")
@click.option("--web-host", envvar="RENDEZVOUS_WEB_HOST", default="127.0.0.1", show_default=True)
@click.option("--web-port", envvar="RENDEZVOUS_WEB_PORT", type=int, default=6066, show_default=True,
              help="Port of /ready, /stats and /metrics; each worker on a host needs its own.")
@log_level_option
def serve(policy_path: Path, broker: str | None, topic_prefix: str, fetch_wait_ms: int, app_id: str,
          worker_id: str | None, web_host: str, web_port: int, log_level: str) -> None:
    """Run one rendezvous worker until SIGTERM. Run several with one --app-id to share the load."""
    try:
        settings = ServiceSettings(
            kafka=kafka_settings(resolve_broker(broker), fetch_wait_ms), topics=topics_for(topic_prefix),
            app_id=app_id, web_host=web_host, web_port=web_port,
            **({"worker_id": worker_id} if worker_id else {}),
        )
        worker = build_worker(settings, policy_path)
    except (BrokerError, DocumentError, TopicError, ServiceError) as exc:
        raise click.ClickException(str(exc)) from None
    run_worker(worker, log_level)
