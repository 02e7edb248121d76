"""Options shared by every command that talks to a broker (also read from RENDEZVOUS_* variables)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from rendezvous.config import DEFAULT_FETCH_WAIT_MS, KafkaSettings
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


def fetch_wait_option(f: Callable[..., Any]) -> Callable[..., Any]:
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


def kafka_settings(broker: str, fetch_wait_ms: int = DEFAULT_FETCH_WAIT_MS) -> KafkaSettings:
    return KafkaSettings(broker, fetch_wait_ms=fetch_wait_ms)


def topics_for(prefix: str) -> Topics:
    return Topics.with_prefix(prefix)
