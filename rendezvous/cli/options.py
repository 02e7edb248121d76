"""Options shared by every command that talks to a broker (also read from RENDEZVOUS_* variables)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from rendezvous.config import DEFAULT_FETCH_WAIT_MS, DEFAULT_PRODUCER_LINGER_MS, KafkaSettings
from rendezvous.topics import DEFAULT_PREFIX, Topics


def broker_option(required: bool = False) -> Callable[[Any], Any]:
    return click.option(
        "--broker", envvar="RENDEZVOUS_BROKER", required=required, metavar="HOST:PORT",
        help="Kafka bootstrap address. Default: the embedded broker running on this machine.",
    )


def topic_prefix_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--topic-prefix", envvar="RENDEZVOUS_TOPIC_PREFIX", default=DEFAULT_PREFIX, show_default=True,
        help="Prefix of the system's topics (PREFIX.requests, PREFIX.scores, ...).",
    )(f)


def client_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Client tuning shared by every component; passed on as a ``kafka_tuning`` dict."""
    f = click.option(
        "--fetch-min-bytes", envvar="RENDEZVOUS_FETCH_MIN_BYTES", type=click.IntRange(1), default=1,
        show_default=True,
        help="Bytes a fetch waits for (up to --fetch-wait-ms). Larger: fewer fetches, less broker load, more latency.",
    )(f)
    f = click.option(
        "--producer-linger-ms", envvar="RENDEZVOUS_PRODUCER_LINGER_MS", type=click.FloatRange(0, 1000),
        default=DEFAULT_PRODUCER_LINGER_MS, show_default=True,
        help="How long a producer waits to batch records; fewer batches cost the broker less.",
    )(f)
    return click.option(
        "--fetch-wait-ms", envvar="RENDEZVOUS_FETCH_WAIT_MS", type=click.IntRange(1, 10_000),
        default=DEFAULT_FETCH_WAIT_MS, show_default=True,
        help="Longest a consumer's fetch waits on the broker; bounds each hop's latency on Tansu.",
    )(f)


def log_level_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--log-level", envvar="RENDEZVOUS_LOG_LEVEL", default="info", show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
    )(f)


def kafka_settings(broker: str, fetch_wait_ms: int = DEFAULT_FETCH_WAIT_MS,
                   producer_linger_ms: float = DEFAULT_PRODUCER_LINGER_MS, fetch_min_bytes: int = 1) -> KafkaSettings:
    return KafkaSettings(broker, fetch_wait_ms=fetch_wait_ms, producer_linger_ms=producer_linger_ms,
                         fetch_min_bytes=fetch_min_bytes)


def topics_for(prefix: str) -> Topics:
    return Topics.with_prefix(prefix)


def stderr_console() -> Console:
    """The console for progress and logs. Piped to a file or CI log, lines are not wrapped."""
    return Console(stderr=True, log_path=False, width=None if sys.stderr.isatty() else 200)
