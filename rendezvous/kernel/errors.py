"""One exception tree for everything a user can get wrong or a deployment can lack.

Every error the system raises on purpose is a :class:`RendezvousError`. Each
kind carries the exit code the CLI uses and, where it helps, a ``hint`` that
says what to do; the CLI turns any of them into one message and that code in
one place (``rendezvous.cli.main``), so a user never sees a traceback for
something they did.

>>> err = KafkaConfigError("sasl.mechanism", "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, not 'MD5'")
>>> str(err), err.exit_code
("Kafka setting sasl.mechanism: must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, not 'MD5'", 2)
>>> isinstance(err, RendezvousError)
True
"""

from __future__ import annotations

__all__ = [
    "RendezvousError", "ConfigError", "KafkaConfigError", "BrokerUnavailable", "TopicError",
    "WireError", "OperationsError",
]


class RendezvousError(Exception):
    """Base of every error rendezvous raises on purpose. ``exit_code`` is the CLI's exit status."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(RendezvousError, ValueError):
    """A setting, option or document is wrong; the message names it."""

    exit_code = 2


class KafkaConfigError(ConfigError):
    """A Kafka client property is missing, malformed or unsupported; ``setting`` names it."""

    def __init__(self, setting: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"Kafka setting {setting}: {problem}", hint=hint)
        self.setting = setting


class BrokerUnavailable(RendezvousError):
    """The broker cannot be reached, or refused our credentials."""

    exit_code = 3


class TopicError(BrokerUnavailable):
    """Topics are missing or laid out in a way the join cannot work with."""


class WireError(RendezvousError, ValueError):
    """A record that does not follow the wire contract (it goes to the dead-letter topic).

    ``kind`` is a short, bounded label for the dead-letter metric.
    """

    kind = "invalid"


class OperationsError(RendezvousError):
    """Starting, stopping or inspecting a part of the deployment failed (runtimes, images, stacks)."""

    exit_code = 4
