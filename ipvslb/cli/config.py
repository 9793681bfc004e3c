"""`ipvslb validate` and `ipvslb render`: check a config, print what keepalived will read."""

from __future__ import annotations

import click

from ipvslb.config import formats
from ipvslb.config.mode import Mode, decide
from ipvslb.config.model import Config
from ipvslb.endpoints.source import Backend
from ipvslb.errors import ConfigError, UserError
from ipvslb.files import write_all_atomic
from ipvslb.keepalived.desired import require_renders

config_option = click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="ipvslb YAML, k0s ClusterConfig or k0sctl Cluster file.",
)
role_option = click.option(
    "--role", type=click.Choice(["controller", "controller+worker"]), default=None,
    help="Override node.role (k0s files do not say whether this node also runs a worker).",
)


def load_and_warn(path: str, role: str | None) -> Config:
    config = require_renders(formats.load(path, role))
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
    click.echo(f"ok: {click.format_filename(config_path)}: {summary(config)}")


def parse_endpoints(text: str, config: Config) -> list[Backend]:
    """``IP,IP:port,[IPv6]:port`` -> backends (a bad entry is a one-line UserError)."""
    from ipvslb.config.validate import Problems, _endpoints, check_backends

    problems = Problems()
    with problems.at("--endpoints"):
        settings = _endpoints(problems, {"source": "static",
                                         "static": [p for p in text.split(",") if p]},
                              config.node.api_server_port)
    with_vs = decide(config)[0] is Mode.VIRTUAL_SERVERS
    check_backends(problems, "--endpoints", settings.static, {v.ip for v in config.all_vips},
                   config.virtual_servers if with_vs else (), config.user_space_proxy_bind_port,
                   config.node.api_server_port)
    if problems.items:
        raise ConfigError(problems.items)
    return [Backend(str(ip), p) for ip, p in settings.static]


@click.command()
@config_option
@role_option
@click.option("--endpoints", default=None, metavar="IP[:PORT],...",
              help="Apiserver backends to render (default: the static list of the config; "
                   "none for the kubernetes source, whose backends are known only at run time).")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Write the files there (mode 0600) instead of printing them.")
@click.option("--priority", type=click.IntRange(1, 254), default=None,
              help="VRRP priority of this node (default: node.priority, else derived from the "
                   "node's address).")
def render(config_path: str, role: str | None, endpoints: str | None, output_dir: str | None,
           priority: int | None) -> None:
    """Print (or write) every file keepalived will read for this node.

    Interfaces given by MAC or left to the default route are resolved on this machine.
    """
    from ipvslb.keepalived.desired import render_files, resolve_facts

    config = load_and_warn(config_path, role)
    if endpoints is not None:
        backends = parse_endpoints(endpoints, config)
    else:
        backends = [Backend(str(ip), p) for ip, p in config.endpoints.static]
    mode, why = decide(config)
    files = render_files(config, mode, resolve_facts(config, priority), backends)
    if output_dir:
        try:
            write_all_atomic(output_dir, files, 0o600)
        except OSError as err:
            where = err.filename or output_dir
            raise UserError(f"--output-dir {output_dir}: cannot write {where} "
                            f"({err.strerror or err}); nothing was written: pick a writable "
                            "directory") from None
        click.echo(f"wrote {', '.join(files)} to {output_dir} (mode {mode.value}: {why})")
        return
    for name, text in files.items():
        click.echo(f"# ==> {name} <==")
        click.echo(text)
