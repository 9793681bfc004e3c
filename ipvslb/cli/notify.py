"""`ipvslb notify`: the hook keepalived runs on every VRRP state change (not for people)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, exists=True))
@click.argument("kind")
@click.argument("name")
@click.argument("state")
@click.argument("priority", required=False)
def notify(run_dir: str, kind: str, name: str, state: str, priority: str | None) -> None:
    """Called by keepalived as `notify` with KIND NAME STATE [PRIORITY].

    Records the state in RUN_DIR/state-<i> and, in virtual-servers mode, lets only the
    VRRP master carry the instance's virtual servers (then reloads keepalived).
    """
    from ipvslb.errors import UserError
    from ipvslb.files import owns_run_dir
    from ipvslb.keepalived.vs_switch import STATES, on_state

    if kind != "INSTANCE" or state not in STATES:
        return
    if not owns_run_dir(Path(run_dir)):
        raise UserError(f"--run-dir {click.format_filename(run_dir)} is not a run directory "
                        "ipvslb created; keepalived passes the agent's node.runDir")
    try:
        reloaded = on_state(Path(run_dir), name, state)
    except OSError as err:
        raise UserError(f"cannot record the state in {click.format_filename(run_dir)} "
                        f"({err.strerror or err}); notify runs as root in the agent's run "
                        "directory") from None
    click.echo(f"ipvslb notify: {name} {state}{' (keepalived reloaded)' if reloaded else ''}",
               err=True)
