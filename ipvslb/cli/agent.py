"""`ipvslb up` (the agent, in the foreground) and `ipvslb down` (cleanup for a gone agent)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click

from ipvslb import files, logfmt
from ipvslb.cli.config import config_option, load_and_warn, role_option
from ipvslb.errors import UserError

log = logfmt.get("agent")

priority_option = click.option(
    "--priority", type=click.IntRange(1, 254), default=None,
    help="VRRP priority of this node (default: node.priority, else derived from its address).")


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Hold ``run_dir/agent.lock`` for the agent's lifetime; one agent per run directory."""
    files.claim_run_dir(run_dir)
    handle = open(run_dir / "agent.lock", "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        raise UserError(f"another ipvslb agent (pid {owner}) is running with run directory "
                        f"{run_dir}; stop it first (or set node.runDir)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, create: bool = True) -> Iterator[None]:
    """Hold the run directory's lock; on exit release it and remove the directory if empty.

    With ``create`` False a missing run directory is left missing (no agent can hold it).
    """
    if not create and not run_dir.exists():
        yield
        return
    lock = lock_run_dir(run_dir)
    try:
        yield
    finally:
        lock.close()
        (run_dir / "agent.lock").unlink(missing_ok=True)
        files.release_run_dir(run_dir)


@click.command()
@config_option
@role_option
@priority_option
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def up(config_path: str, role: str | None, priority: int | None, log_level: str) -> None:
    """Run the agent in the foreground until SIGTERM/SIGINT (systemd-friendly).

    Logs go to stderr as logfmt lines with a component= field. On stop, everything ipvslb
    added (keepalived, VIPs, dummyvip0, IPVS services, iptables rules, run files) is removed.
    """
    from ipvslb.agent import Agent

    logfmt.setup(log_level)
    config = load_and_warn(config_path, role)
    run_dir = Path(config.node.run_dir)
    agent = Agent(config, priority)  # every check of config and node, before any change
    with run_dir_lock(run_dir):

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()

            def stopping(sig: signal.Signals) -> None:
                if not stop.is_set():
                    log.info("stopping", extra={"signal": sig.name})
                stop.set()

            # SIGHUP (a closed terminal, a careless `kill -HUP`) stops as cleanly as SIGTERM;
            # its default action would kill the agent with keepalived's VIPs and rules left.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, stopping, sig)
            await agent.run(stop)

        asyncio.run(main())


@click.command()
@config_option
@role_option
def down(config_path: str, role: str | None) -> None:
    """Remove what an agent that is gone left behind (keepalived, VIPs, dummyvip0, IPVS
    services, iptables rules, run files). Refuses while an agent is running."""
    from ipvslb.agent import cleanup
    from ipvslb.keepalived.desired import resolve_facts

    logfmt.setup("info")
    config = load_and_warn(config_path, role)
    run_dir = Path(config.node.run_dir)
    with run_dir_lock(run_dir, create=False):
        cleanup(config, resolve_facts(config).interfaces)
    click.echo("down: removed what ipvslb had added")
