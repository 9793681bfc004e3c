"""The ``ipvslb`` command line.

Commands live in their own modules and are imported only when invoked, so that
``ipvslb show`` does not pay for importing the Kubernetes client (slow on small nodes and in
the test guest).
"""

from __future__ import annotations

import importlib
import sys

import click

from ipvslb import __version__
from ipvslb.errors import UserError

# command name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "validate": "ipvslb.cli.config:validate",
    "render": "ipvslb.cli.config:render",
    "show": "ipvslb.cli.show:show",
    "status": "ipvslb.cli.status:status",
    "notify": "ipvslb.cli.notify:notify",
    "up": "ipvslb.cli.agent:up",
    "down": "ipvslb.cli.agent:down",
    "lab": "ipvslb.cli.lab:lab",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ipvslb")
def cli() -> None:
    """ipvslb: a floating virtual IP plus L4 load balancing for Kubernetes apiservers.

    Run `ipvslb up -c FILE` on every control-plane node. Configuration is ipvslb's YAML,
    a k0s ClusterConfig or a k0sctl Cluster file.
    """


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except UserError as err:
        for line in err.message.splitlines() or [""]:
            click.echo(f"error: {line}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
