"""``rendezvous serve``: one rendezvous worker."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from rendezvous.kernel.options import (
    broker_option,
    client_options,
    kafka_settings,
    log_level_option,
    secret_option,
    stop_grace_option,
    topic_prefix_option,
    topics_for,
)
from rendezvous.kernel.trust import StackSecret
from rendezvous.kernel.wire import DEFAULT_MAX_REQUEST_BYTES
from rendezvous.operations.broker import resolve_broker
from rendezvous.routing.router import RouterLimits
from rendezvous.service.settings import DEFAULT_SLA_GUARD_MS

__all__ = ["serve"]


@click.command()
@click.option("--policy", "policy_path", envvar="RENDEZVOUS_POLICY", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Routing policy (YAML) to start with, unless the policies topic holds a higher version.")
@broker_option()
@topic_prefix_option
@client_options
@click.option("--app-id", envvar="RENDEZVOUS_APP_ID", default=None,
              help="Consumer group shared by the workers of one deployment. Default: the topic prefix.")
@click.option("--worker-id", envvar="RENDEZVOUS_WORKER_ID", default=None, help="Name written on results. Default: host/pid.")
@click.option("--web-host", envvar="RENDEZVOUS_WEB_HOST", default="127.0.0.1", show_default=True,
              help="Address of the web server (/ready, /stats, /metrics); 0.0.0.0 to serve other hosts.")
@click.option("--web-port", envvar="RENDEZVOUS_WEB_PORT", type=click.IntRange(0, 65535), default=6066, show_default=True,
              help="Port of /ready, /stats and /metrics; each worker on a host needs its own (0: a free one).")
@click.option("--max-request-bytes", envvar="RENDEZVOUS_MAX_REQUEST_BYTES", type=click.IntRange(64),
              default=DEFAULT_MAX_REQUEST_BYTES, show_default=True, help="Larger requests are dead-lettered.")
@click.option("--orphan-ttl-ms", envvar="RENDEZVOUS_ORPHAN_TTL_MS", type=click.FloatRange(1),
              default=RouterLimits.orphan_ttl_ms, show_default=True,
              help="How long a score may wait for its request before it is dropped as unknown.")
@click.option("--sla-guard-ms", envvar="RENDEZVOUS_SLA_GUARD_MS", type=click.FloatRange(0),
              default=DEFAULT_SLA_GUARD_MS, show_default=True,
              help="Take the last decision this long before the SLA, so that the answer is written by then "
                   "(at most a quarter of the SLA). Raise it if rendezvous_sla_misses_total{cause=\"timer\"} "
                   "or {cause=\"write\"} grows.")
@click.option("--standby/--no-standby", envvar="RENDEZVOUS_STANDBY", default=True, show_default=True,
              help="Read every partition a second time, so that a worker that dies is covered by the others within "
                   "milliseconds, and no partition stops while the group rebalances (costs CPU per request).")
@secret_option()
@log_level_option
@stop_grace_option
def serve(policy_path: Path | None, broker: str | None, topic_prefix: str, fetch_wait_ms: int, producer_linger_ms: float,
          fetch_min_bytes: int,
          app_id: str | None,
          worker_id: str | None, web_host: str, web_port: int, max_request_bytes: int, orphan_ttl_ms: float,
          sla_guard_ms: float, standby: bool, secret: StackSecret | None, log_level: str, stop_grace_s: float) -> None:
    """Run one rendezvous worker until SIGTERM. Run several with one --app-id to share the load."""
    # Faust and the worker load here, not when the CLI starts: other commands stay quick.
    from rendezvous.service.run import build_worker, run_worker
    from rendezvous.service.settings import ServiceSettings

    settings = ServiceSettings(
        kafka=kafka_settings(resolve_broker(broker), fetch_wait_ms, producer_linger_ms, fetch_min_bytes),
        topics=topics_for(topic_prefix),
        app_id=app_id or topic_prefix, web_host=web_host, web_port=web_port, max_request_bytes=max_request_bytes,
        limits=RouterLimits(orphan_ttl_ms=orphan_ttl_ms), sla_guard_ms=sla_guard_ms, stop_grace_s=stop_grace_s,
        secret=secret, standby=standby,
    )
    if worker_id:
        settings = dataclasses.replace(settings, worker_id=worker_id)
    worker = build_worker(settings, policy_path)
    run_worker(worker, log_level)
