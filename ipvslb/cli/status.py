"""`ipvslb status`: ask the running agent for its state over its status socket.

Exit codes (for monitoring scripts): 0 healthy, 1 degraded (a problem is listed), 3 no agent
answers; 2 for bad input, as every command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ipvslb.cli.config import load_and_warn, role_option
from ipvslb.config.model import DEFAULT_RUN_DIR
from ipvslb.errors import UserError

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_NO_AGENT = 0, 1, 3


class NoAgentError(UserError):
    exit_code = EXIT_NO_AGENT


def fetch(run_dir: Path, timeout: float = 10.0) -> dict[str, Any]:
    """The agent's snapshot; UserError (exit 3) when no agent answers."""
    from ipvslb.status.server import NoAgent, request

    try:
        return request(run_dir, timeout)
    except NoAgent as err:
        raise NoAgentError(f"{err}; is `ipvslb up` running with this run directory?") from None
    except PermissionError:
        raise UserError(f"permission denied on {run_dir}/status.sock; run ipvslb status as "
                        "root") from None
    except (OSError, ValueError) as err:
        raise NoAgentError(f"the agent of {run_dir} did not answer ({err}); check its "
                           "logs") from None


def exit_code(snap: dict[str, Any]) -> int:
    return EXIT_HEALTHY if snap.get("healthy") else EXIT_DEGRADED


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    s = max(0.0, now - t)
    when = time.strftime("%H:%M:%S", time.localtime(t))
    if s < 120:
        return f"{when} ({s:.0f}s ago)"
    if s < 7200:
        return f"{when} ({s / 60:.0f}m ago)"
    return f"{when} ({s / 3600:.1f}h ago)"


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def human(snap: dict[str, Any]) -> str:
    """The compact view: a header, one block per VRRP instance, then a table of backends."""
    now = snap["time"]
    health = "healthy" if snap["healthy"] else "DEGRADED"
    lines = [f"ipvslb {snap['version']} on {snap['node']} (pid {snap['pid']}): {health}",
             f"mode: {snap['mode']} ({snap['why']})"]
    for inst in snap["instances"]:
        state = inst["state"] or "unknown"
        lines.append(f"{inst['name']}: {state} since {_ago(inst['since'], now)}, "
                     f"{inst['transitions']} transition(s) seen")
        held = ", ".join(inst["vipsHeld"]) or "none"
        lines.append(f"  VIPs {', '.join(inst['vips'])} on {inst['interface']}; "
                     f"held here: {held}")
        if inst.get("effectivePriority") is not None:
            lines.append(f"  priority {inst['effectivePriority']} (base {inst['basePriority']}),"
                         f" adverts sent {inst['advertsSent']} received "
                         f"{inst['advertsReceived']}, became master {inst['becameMaster']}x")
    ka = snap["keepalived"]
    running = f"running, pid {ka['pid']}" if ka["running"] else "NOT RUNNING"
    lines.append(f"keepalived: {running}, started {_ago(ka['startedAt'], now)}, "
                 f"restarts {ka['restarts']}, "
                 f"reloads {ka['reloads']}"
                 + (f", last exit code {ka['lastExitCode']}" if ka['lastExitCode'] is not None
                    else ""))
    dummy = snap.get("dummy")
    if dummy:
        watch = "watched" if dummy["watching"] else "NOT WATCHED"
        lines.append(f"{dummy['name']}: {watch}, repaired {dummy['repairs']}x"
                     + (f", last {_ago(dummy['lastRepair'], now)}" if dummy["lastRepair"]
                        else "")
                     + (f", NOT REPAIRED: {dummy['refused']}" if dummy["refused"] else ""))
    src = snap["source"]
    if src.get("kind") == "kubernetes":
        watch = ("connected" if src.get("connected") else
                 "RETRYING" if src.get("retrying") else "connecting")
        lines.append(f"endpoints: kubernetes {src.get('resource') or ''}, watch {watch}, "
                     f"resourceVersion {src.get('resourceVersion') or '-'}, last event "
                     f"{_ago(src.get('lastEvent'), now)}, errors {src.get('errors', 0)}"
                     + (f" (last: {src['lastError']})" if src.get("lastError") else ""))
    else:
        lines.append(f"endpoints: {src.get('kind')}")
    local = snap["localApiserver"]
    if local["enabled"]:
        verdict = {True: "healthy", False: "UNHEALTHY", None: "not checked yet"}[local["healthy"]]
        lines.append(f"local apiserver: {verdict}"
                     + (f" ({local['reason']})" if local["reason"] else ""))
    proxy = snap.get("proxy")
    if proxy:
        lines.append(f"proxy: {proxy['listen']}, {proxy['activeConnections']} open, "
                     f"{proxy['totalConnections']} total, {proxy['failedConnections']} failed, "
                     f"{proxy['rejectedConnections']} rejected, "
                     f"{_bytes(proxy['bytesToBackends'])} up / "
                     f"{_bytes(proxy['bytesToClients'])} down")
    lines.append("")
    rows = [("BACKEND", "ROTATION", "CHECK", "LATENCY", "CONNS", "LAST CHECK / REASON")]
    for b in snap["backends"]:
        check = {True: "up", False: "DOWN", None: "-"}[b["up"]]
        latency = (f"{b['lastLatencySeconds'] * 1000:.1f}ms"
                   if b.get("lastLatencySeconds") is not None else "-")
        conns = (str(b["activeConnections"]) if b.get("activeConnections") is not None
                 else "-")
        extra = b["reason"] or (_ago(b["lastCheck"], now) if b.get("lastCheck") else "")
        if b.get("ejected"):
            extra = "ejected (connect failures) " + extra
        rows.append((b["address"], "yes" if b["inRotation"] else "no", check, latency, conns,
                     extra))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5])
    for svc in snap.get("ipvs") or []:
        lines.append(f"IPVS {svc['address']} {svc['scheduler']}: {svc['connections']} conns")
        for rs in svc["realServers"]:
            lines.append(f"  -> {rs['address']} weight {rs['weight']} active "
                         f"{rs['activeConnections']} inactive {rs['inactiveConnections']}")
    if snap["problems"]:
        lines.append("problems:")
        lines += [f"  - {p}" for p in snap["problems"]]
    return "\n".join(line.rstrip() for line in lines)


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="The agent's configuration (its node.runDir says where to ask).")
@role_option
@click.option("--run-dir", type=click.Path(file_okay=False, readable=False), default=None,
              help=f"The agent's run directory, without -c (default {DEFAULT_RUN_DIR}).")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON "
              "(schema ipvslb.status/v1).")
def status(config_path: str | None, role: str | None, run_dir: str | None,
           as_json: bool) -> None:
    """Show the running agent's state: VRRP instances, VIPs held, backends, endpoint watch,
    keepalived, proxy or IPVS. Exit 0 healthy, 1 degraded, 3 no agent."""
    if config_path is not None and run_dir is not None:
        raise UserError("-c and --run-dir exclude each other; give one")
    if config_path is not None:
        run_dir = load_and_warn(config_path, role).node.run_dir
    snap = fetch(Path(run_dir or DEFAULT_RUN_DIR))
    if "error" in snap:
        raise UserError(f"the agent refused: {snap['error']}")
    click.echo(json.dumps(snap, indent=2, sort_keys=True) if as_json else human(snap))
    raise SystemExit(exit_code(snap))
