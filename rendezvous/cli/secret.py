"""``rendezvous secret``: make a stack's secret, and give a model runner its own key.

``rendezvous up`` does both by itself. These are for stacks run otherwise (Compose,
Kubernetes): the workers and gateways get the secret (``--secret-file``), each model's
runners only that model's key (``--score-key-file``), so one model cannot speak for another.
"""

from __future__ import annotations

from pathlib import Path

import click

from rendezvous.kernel.errors import ConfigError
from rendezvous.kernel.trust import StackSecret, write_key

__all__ = ["secret", "create", "model_key"]


@click.group()
def secret() -> None:
    """Make a stack's secret and the model keys derived from it (`up` does this by itself)."""


@secret.command("create")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
def create(path: Path) -> None:
    """Write a new secret (32 random bytes, readable by you only) to FILE; an existing one is kept."""
    existed = path.exists()
    StackSecret.create(path)
    click.echo(f"{path}: {'kept the secret already there' if existed else 'new secret'} (mode 600; never shown)")


@secret.command("model-key")
@click.argument("model")
@click.option("--secret-file", "secret_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The stack's secret.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write MODEL's key (mode 600), for its runners' --score-key-file.")
def model_key(model: str, secret_file: Path, out: Path) -> None:
    """Write the key MODEL's runners sign their scores with; workers given the secret derive the same."""
    if not model.strip():
        raise ConfigError("MODEL is empty: give the model's name, as in its spec")
    write_key(out, StackSecret.load(secret_file).model_key(model))
    click.echo(f"{out}: the score key of model {model!r} (mode 600; never shown)")
