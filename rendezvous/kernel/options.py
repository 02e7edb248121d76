"""Options shared by every command that talks to a broker (also read from RENDEZVOUS_* variables)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from confluent_kafka import KafkaException
from rich.console import Console

from rendezvous.kernel.client_config import CONFIG_ENV, ClientConfig
from rendezvous.kernel.errors import RendezvousError
from rendezvous.kernel.lifecycle import DEFAULT_STOP_GRACE_S
from rendezvous.kernel.settings import (
    DEFAULT_FETCH_WAIT_MS,
    DEFAULT_PRODUCER_LINGER_MS,
    KafkaSettings,
)
from rendezvous.kernel.topics import DEFAULT_PREFIX, Topics
from rendezvous.kernel.trust import StackSecret, remembered_secret

__all__ = [
    "user_errors", "RendezvousGroup", "RendezvousCommand", "expose_env_vars", "client_config", "broker_option",
    "engine_option", "retention_option", "topic_prefix_option", "client_options", "log_level_option",
    "stop_grace_option", "secret_option", "stack_secret", "kafka_settings", "topics_for", "stderr_console",
]


class _UserError(click.ClickException):
    """A :class:`RendezvousError` as the CLI shows it: one message, the hint, its own exit code."""

    def __init__(self, exc: RendezvousError) -> None:
        message = str(exc) + (f"\n  hint: {exc.hint}" if exc.hint else "")
        super().__init__(message)
        self.exit_code = exc.exit_code


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The one place where errors become messages and exit codes (see ``rendezvous.kernel.errors``)."""
    try:
        yield
    except RendezvousError as exc:
        raise _UserError(exc) from None
    except KafkaException as exc:  # a client refused its configuration or the cluster refused us
        err = exc.args[0] if exc.args else exc
        text = err.str() if hasattr(err, "str") else str(err)
        raise _UserError(RendezvousError(f"Kafka: {text}", hint="check --broker and --kafka-config")) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


class RendezvousGroup(click.Group):
    """A command group whose commands report :class:`RendezvousError` as a message and exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        with user_errors():
            return super().invoke(ctx)


class RendezvousCommand(click.Command):
    """A stand-alone command (``python -m containers``, ``python -m decoy``) with the same error reporting."""

    def invoke(self, ctx: click.Context) -> Any:
        with user_errors():
            return super().invoke(ctx)





def expose_env_vars(command: click.Command, prefix: str = "RENDEZVOUS") -> click.Command:
    """Give every option of ``command`` (and its subcommands) a ``PREFIX_<OPTION>`` variable, shown by --help.

    Options that name their own variable keep it; --help and --version have none.
    """
    for param in command.params:
        builtin = param.name == "help" or (param.name == "version" and param.is_eager)  # click's own flags
        if isinstance(param, click.Option) and not builtin and not param.hidden:
            if param.envvar is None:
                param.envvar = f"{prefix}_{(param.name or '').upper()}"
            param.show_envvar = True
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            expose_env_vars(sub, prefix)
    return command


_CLIENT_KEY = "rendezvous.kafka_client"


def _load_client_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> None:
    try:
        ctx.meta[_CLIENT_KEY] = ClientConfig.load(path)
    except RendezvousError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param_hint="--kafka-config / RENDEZVOUS_KAFKA_*") from None


def _broker_or_bootstrap(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return value or client_config().bootstrap


def client_config() -> ClientConfig:
    """The Kafka client properties of the running command (``--kafka-config`` and ``RENDEZVOUS_KAFKA_*``)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        found = ctx.find_root().meta.get(_CLIENT_KEY) or ctx.meta.get(_CLIENT_KEY)
        if isinstance(found, ClientConfig):
            return found
    return ClientConfig.load()


def broker_option(required: bool = False) -> Callable[[Any], Any]:
    """``--broker`` and ``--kafka-config``: where the cluster is and how to connect to it securely."""
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option(
            "--broker", envvar="RENDEZVOUS_BROKER", required=required, metavar="HOST:PORT",
            callback=_broker_or_bootstrap, show_envvar=True,
            help="Kafka bootstrap address. Default: bootstrap.servers of --kafka-config, else the embedded "
                 "broker running on this machine.",
        )(f)
        return click.option(
            "--kafka-config", envvar=CONFIG_ENV, metavar="FILE", is_eager=True, expose_value=False,
            callback=_load_client_config, show_envvar=True, type=click.Path(dir_okay=False),
            help="Kafka client .properties file (security.protocol, ssl.*, sasl.*), as Confluent Cloud or MSK "
                 "give it; any property can also be set as RENDEZVOUS_KAFKA_<NAME> (e.g. "
                 "RENDEZVOUS_KAFKA_SASL_PASSWORD, or ..._FILE to read it from a file). Secrets are never shown.",
        )(f)
    return decorate


def engine_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--engine``: which embedded broker to start when there is no --broker (see rendezvous.operations.broker)."""
    return click.option(
        "--engine", envvar="RENDEZVOUS_BROKER_ENGINE", show_envvar=True, default="auto", show_default=True,
        type=click.Choice(["auto", "kafka", "tansu"], case_sensitive=False),
        help="Embedded broker: kafka (Apache Kafka 4, needs Java 17+), tansu (no Java; in memory, no retention, "
             "slower hops), or auto: kafka where Java 17+ runs and its jars are fetched, else tansu.",
    )(f)


def retention_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--retention-minutes``: how long the request path's topics keep a record, set when they are created."""
    return click.option(
        "--retention-minutes", envvar="RENDEZVOUS_RETENTION_MINUTES", show_envvar=True, default=60, show_default=True,
        type=click.IntRange(1), help="How long requests, scores, results and outcomes are kept (set on topics this "
                                     "creates; dead letters are kept a week, policies for ever).",
    )(f)


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
        help="Longest a consumer's empty fetch waits on the broker. Kafka answers as soon as a record arrives; "
             "Tansu only at this wait, so use 5 there (up and demo do).",
    )(f)


def log_level_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--log-level", envvar="RENDEZVOUS_LOG_LEVEL", default="info", show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]), help="How much the service logs.",
    )(f)


def stop_grace_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--stop-grace-s``: how long the service may take to stop after SIGTERM (see kernel.lifecycle)."""
    return click.option(
        "--stop-grace-s", envvar="RENDEZVOUS_STOP_GRACE_S", show_envvar=True, type=click.FloatRange(0.5, 600),
        default=DEFAULT_STOP_GRACE_S, show_default=True,
        help="After SIGTERM the service flushes and commits, and exits within this many seconds whatever the "
             "broker does (what it could not commit is read again by whoever takes over). A second signal exits "
             "at once.",
    )(f)


def secret_option(discover: bool = False) -> Callable[[Any], Any]:
    """``--secret-file``: the stack's secret, from which the keys that sign policies, scores and bandit
    records are derived (see kernel.trust); passed on as a :class:`StackSecret` or None.

    ``discover`` only changes the help: the operator's commands (policy apply, models deploy) given no
    secret look up the one ``rendezvous up`` made for the same broker and topic prefix
    (:func:`stack_secret`). Services never guess: a worker checks signatures only when given the secret."""
    def load(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> StackSecret | None:
        try:
            return StackSecret.load(value) if value is not None else None
        except RendezvousError as exc:  # parsing happens before the command's own error reporting
            raise click.BadParameter(str(exc) + (f" ({exc.hint})" if exc.hint else ""),
                                     param_hint="--secret-file / RENDEZVOUS_SECRET_FILE") from None

    found = (" Default: the secret `rendezvous up` made (WORKDIR/secret) for the same broker and topic prefix on "
             "this machine, if any; else none, and nothing is signed.") if discover else (
             " Default: none, and nothing is checked (the service warns).")
    return click.option(
        "--secret-file", "secret", envvar="RENDEZVOUS_SECRET_FILE", show_envvar=True, default=None, callback=load,
        type=click.Path(dir_okay=False, path_type=Path),
        help="The stack's secret (a file only you can read; `rendezvous up` makes WORKDIR/secret). Policies are "
             "signed with a key derived from it, and services given it accept only signed policies, scores and "
             "bandit records." + found,
    )


def stack_secret(given: StackSecret | None, bootstrap: str, prefix: str) -> StackSecret | None:
    """The secret an operator's command uses: the one given, else the one `up` made for this stack."""
    return given if given is not None else remembered_secret(bootstrap, prefix)


def kafka_settings(broker: str, fetch_wait_ms: int = DEFAULT_FETCH_WAIT_MS,
                   producer_linger_ms: float = DEFAULT_PRODUCER_LINGER_MS, fetch_min_bytes: int = 1) -> KafkaSettings:
    """The settings every client of this command uses, with the command's Kafka client properties."""
    return KafkaSettings(broker, fetch_wait_ms=fetch_wait_ms, producer_linger_ms=producer_linger_ms,
                         fetch_min_bytes=fetch_min_bytes, client=client_config())


def topics_for(prefix: str) -> Topics:
    return Topics.with_prefix(prefix)


def stderr_console() -> Console:
    """The console for progress and logs. Piped to a file or CI log, lines are not wrapped."""
    return Console(stderr=True, log_path=False, width=None if sys.stderr.isatty() else 200)
