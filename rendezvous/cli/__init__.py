"""The ``rendezvous`` command line. Each subcommand lives in its own module."""

from __future__ import annotations

import click

from rendezvous.cli.archive import archive, replay
from rendezvous.cli.demo import demo
from rendezvous.cli.explain import explain
from rendezvous.cli.gateway import gateway
from rendezvous.cli.infra import broker, topics
from rendezvous.cli.models import deploy, image, logs, models, scale, stop
from rendezvous.cli.policy import policy
from rendezvous.cli.report import report
from rendezvous.cli.secret import secret
from rendezvous.cli.serve import serve
from rendezvous.cli.stack import up
from rendezvous.cli.status import status
from rendezvous.kernel.options import RendezvousGroup, expose_env_vars


@click.group(cls=RendezvousGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rendezvous")
def main() -> None:
    """rendezvous: route streaming model scores by policy, within an SLA.

    Start with `rendezvous demo`, which runs everything on this machine.
    """


for command in (demo, up, status, broker, topics, serve, gateway, policy, explain, replay, archive,
                deploy, scale, models, stop, logs, image, secret, report):
    main.add_command(command)
expose_env_vars(main)  # every option has a RENDEZVOUS_* variable, and --help says which
