"""--help is the manual: every option says what it does and which RENDEZVOUS_* variable sets it."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from rendezvous.cli import main


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        if any(isinstance(p, click.Option) for p in command.params if p.name not in ("help", "version")):
            yield path, command  # a group that runs on its own (`rendezvous broker`) has options of its own
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")
    else:
        yield path, command


def _standalone() -> list[tuple[str, click.Command]]:
    from containers.__main__ import main as runner
    from decoy.__main__ import main as decoy

    return [("python -m containers", runner), ("python -m decoy", decoy)]


@pytest.mark.parametrize(("path", "command"), [*_commands(main, "rendezvous"), *_standalone()],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help_and_a_variable_shown_by_help(path: str, command: click.Command):
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"{path} {param.opts[0]} has no help text"
            assert param.envvar and param.show_envvar, f"{path} {param.opts[0]} has no RENDEZVOUS_* variable"
            assert str(param.envvar).startswith("RENDEZVOUS_")


def test_up_serves_on_the_documented_ports_by_default():
    """README: worker metrics on 6066, the gateway on 8080 and its gRPC on 8081, the embedded broker on 9092 (the
    live tests bind free ports)."""
    defaults = {p.name: p.default for p in main.commands["up"].params}
    assert (defaults["web_port"], defaults["gateway_port"], defaults["no_gateway"]) == (6066, 8080, False)
    assert defaults["gateway_grpc_port"] == 8081 and defaults["broker_port"] == 9092  # the README's kcat lines
    gateway = {p.name: p.default for p in main.commands["gateway"].params}
    assert (gateway["port"], gateway["grpc_port"], gateway["no_grpc"]) == (8080, 8081, False)
    serve = {p.name: p.default for p in main.commands["serve"].params}
    assert serve["web_port"] == 6066 and serve["sla_guard_ms"] == 5.0


def test_the_embedded_broker_engine_is_chosen_by_option_or_variable_and_shown():
    for name in ("up", "demo", "broker"):
        engine = next(p for p in main.commands[name].params if p.name == "engine")
        assert (engine.default, engine.envvar) == ("auto", "RENDEZVOUS_BROKER_ENGINE"), name
        assert set(engine.type.choices) == {"auto", "kafka", "tansu"}
