"""`ipvslb validate` and `ipvslb render`: check a config, print what keepalived will read."""

from __future__ import annotations

import click

from ipvslb import config_file
from ipvslb.config import Config
from ipvslb.mode import decide

config_option = click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="ipvslb YAML, k0s ClusterConfig or k0sctl Cluster file.",
)
role_option = click.option(
    "--role", type=click.Choice(["controller", "controller+worker"]), default=None,
    help="Override node.role (k0s files do not say whether this node also runs a worker).",
)


def load_and_warn(path: str, role: str | None) -> Config:
    config = config_file.load(path, role)
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    return config


def summary(config: Config) -> str:
    mode, _ = decide(config)
    vips = ", ".join(str(v) for v in config.all_vips)
    n = len(config.vrrp_instances)
    return (f"{config.source_format.value} config: {n} VRRP instance{'s' * (n != 1)} "
            f"(VIPs {vips}), {len(config.virtual_servers)} virtual server(s), mode {mode.value}, "
            f"endpoints from {config.endpoints.source.value}")


@click.command()
@config_option
@role_option
def validate(config_path: str, role: str | None) -> None:
    """Check a configuration file; print a one-line summary (exit 0) or every problem (exit 2)."""
    config = load_and_warn(config_path, role)
    click.echo(f"ok: {config_path}: {summary(config)}")
