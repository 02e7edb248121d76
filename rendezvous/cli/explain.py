"""``rendezvous explain``: one request's story, from the streams."""

from __future__ import annotations

import json
import time

import click

from rendezvous.cli.archive import _time_ms
from rendezvous.kernel.options import (
    broker_option,
    kafka_settings,
    topic_prefix_option,
    topics_for,
)
from rendezvous.operations.broker import resolve_broker
from rendezvous.tools.explain import explain as explain_request
from rendezvous.tools.explain import render

__all__ = ["explain"]


@click.command()
@click.argument("request_id")
@broker_option()
@topic_prefix_option
@click.option("--since", default=None, help="Look from this time on (epoch ms or ISO 8601). Default: the last hour.")
@click.option("--json", "as_json", is_flag=True, help="The story as JSON.")
def explain(request_id: str, broker: str | None, topic_prefix: str, since: str | None, as_json: bool) -> None:
    """Tell the whole story of REQUEST_ID: request, scores and timings, decision and why, outcome."""
    kafka = kafka_settings(resolve_broker(broker))
    since_ms = _time_ms(since) if since else time.time() * 1000 - 3_600_000
    story = explain_request(kafka, topics_for(topic_prefix), request_id, since_ms)
    if as_json:
        click.echo(json.dumps(story.as_dict(), default=str))
    else:
        click.echo("\n".join(render(story)))
    if not (story.request or story.deadletter or story.results):
        raise SystemExit(1)
