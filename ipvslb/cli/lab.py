"""`ipvslb lab`: the one-machine lab (three controllers and a client in network namespaces).

    ipvslb lab demo                 the whole tour, then everything is removed
    ipvslb lab up | status | failover | down

Only addresses inside the namespaces the lab creates are used (subnet 10.77.0.0/24 by
default); the host's own interfaces are never touched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ipvslb.config.model import Role
from ipvslb.errors import UserError
from ipvslb.lab import nslab
from ipvslb.lab.topology import DEFAULT_TOPOLOGY, LabMode, Topology

VM_RUNNER = Path(__file__).resolve().parents[1] / "tests" / "vm" / "run"


def _state_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--state-dir", type=click.Path(path_type=Path),
                        default=nslab.DEFAULT_STATE_DIR, show_default=True,
                        help="Where the lab keeps its state, configs and logs.")(fn)


def _build_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--mode", type=click.Choice(["auto", *(m.value for m in LabMode)]),
                     default="auto", show_default=True,
                     help="virtual-servers: keepalived + IPVS (needs IPVS and dummy links, or "
                          "--vm); userspace: proxy + iptables REDIRECT (any kernel); auto: "
                          "virtual-servers where this kernel can, else userspace."),
        click.option("--apiserver", type=click.Choice(["auto", *nslab.APISERVER_KINDS]),
                     default="auto", show_default=True,
                     help="kube: a real etcd + kube-apiserver per controller (endpoints: "
                          "kubernetes, kubectl through the VIP); standin: a small HTTPS "
                          "stand-in; auto: kube where the kube-apiserver is built."),
        click.option("--controllers", type=click.IntRange(1, 9), default=3, show_default=True,
                     help="How many controllers of the topology to start."),
        click.option("--topology", type=click.Path(path_type=Path), default=DEFAULT_TOPOLOGY,
                     show_default=True, help="The lab topology file (shared with Vagrant)."),
        click.option("--subnet", default=nslab.DEFAULT_SUBNET, show_default=True,
                     help="The lab's own subnet inside its namespaces."),
        click.option("--prefix", default=nslab.DEFAULT_PREFIX, show_default=True,
                     help="Prefix of the lab's namespace names."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group()
def lab() -> None:
    """A three-controller lab in network namespaces on this machine: real keepalived and
    `ipvslb up` per controller, an HTTPS apiserver stand-in on each, and a client.

    Start with `ipvslb lab demo`. Needs root (namespaces), iproute2, keepalived, iptables
    and openssl.
    """


# --- checks ---------------------------------------------------------------------------------

def _preflight(mode: LabMode, prefix: str) -> None:
    if os.geteuid() != 0:
        raise UserError("ipvslb lab needs root (it creates network namespaces); run it as root "
                        "or with sudo")
    needs = {"ip": "iproute2", "openssl": "openssl"}
    if mode is LabMode.USERSPACE:
        needs["iptables"] = "iptables"
    for tool, package in needs.items():
        if shutil.which(tool) is None:
            raise UserError(f"`{tool}` not found; install Debian's {package} package")
    if not os.access("/usr/sbin/keepalived", os.X_OK):
        raise UserError("keepalived not found at /usr/sbin/keepalived; install Debian's "
                        "keepalived package")
    if mode is LabMode.VIRTUAL_SERVERS:
        ok, missing = nslab.kernel_has_ipvs(f"{prefix}-probe")
        if not ok:
            raise UserError(f"virtual-servers mode needs {missing}, which this kernel lacks: "
                            "run it in the project's QEMU guest with `ipvslb lab demo --mode "
                            "virtual-servers --vm`, or use --mode userspace")
        if importlib.util.find_spec("ipvslb.node.dummy") is None:
            raise UserError("virtual-servers mode needs ipvslb.node.dummy, which this build of "
                            "ipvslb lacks; use --mode userspace")


def choose_mode(mode: str, prefix: str) -> LabMode:
    """``auto``: the first-class virtual-servers mode where this kernel has IPVS and dummy
    links, else userspace (said in one line)."""
    if mode != "auto":
        return LabMode(mode)
    ok, missing = nslab.kernel_has_ipvs(f"{prefix}-probe") if os.geteuid() == 0 else (False, "")
    if ok:
        return LabMode.VIRTUAL_SERVERS
    say(f"mode: userspace (this kernel lacks {missing or 'what virtual-servers mode needs'}; "
        "`--mode virtual-servers --vm` runs the first-class mode in the project's QEMU guest)")
    return LabMode.USERSPACE


def choose_apiserver(apiserver: str) -> str:
    """``auto``: real apiservers where the build exists, else the stand-in (said in one
    line, with how to build it)."""
    if apiserver != "auto":
        return apiserver
    from ipvslb.lab import controlplane

    why = controlplane.missing()
    if why is None:
        return "kube"
    say(f"apiservers: HTTPS stand-ins ({why}; then `--apiserver kube` runs real ones)")
    return "standin"


def _plan(mode: str, controllers: int, topology: Path, subnet: str, prefix: str,
          state_dir: Path, apiserver: str = "auto") -> nslab.Lab:
    if os.geteuid() != 0:
        _preflight(LabMode.USERSPACE, prefix)  # one line: needs root
    lab_mode = choose_mode(mode, prefix)
    _preflight(lab_mode, prefix)
    kind = choose_apiserver(apiserver)
    topo = Topology.load(topology).select(controllers=controllers, workers=0)
    topo = topo.with_mode(lab_mode)
    if lab_mode is LabMode.USERSPACE:
        topo = topo.with_role(Role.CONTROLLER_WORKER)  # the role k0s runs userspace mode on
    else:
        topo = topo.with_role(Role.CONTROLLER)
    if nslab.Lab.exists(state_dir):
        raise UserError(f"a lab is up already ({state_dir}); see `ipvslb lab status`, or "
                        "remove it with `ipvslb lab down`")
    return nslab.Lab.plan(topo, state_dir=state_dir, prefix=prefix, subnet=subnet,
                          apiserver=kind)


# --- output ---------------------------------------------------------------------------------

def say(text: str = "") -> None:
    click.echo(text)


def title(text: str) -> None:
    click.echo("")
    click.secho(f"== {text}", bold=True)


def shown(command: str, output: str) -> None:
    click.echo(f"$ {command}")
    for line in output.rstrip().splitlines():
        click.echo(f"  {line}")


def show_holders(lab: nslab.Lab) -> None:
    for member in lab.state.controllers:
        shown(f"ip -n {member.netns} -br addr show dev eth0", lab.brief(member.name))


def short(fp: str) -> str:
    return fp[:23] + "…"


def show_fetches(lab: nslab.Lab, rounds: int = 1) -> set[str]:
    certs = lab.certificates()
    seen: set[str] = set()
    for _ in range(rounds):
        for source in lab.sources():
            try:
                got = lab.fetch(source, timeout=3.0)
            except OSError as err:
                say(f"  from {source:<12} -> failed: {err}")
                continue
            owner = certs.get(got.fingerprint, "an unknown certificate")
            seen.add(got.name)
            say(f"  from {source:<12} -> {got.name:<8} certificate sha256 {short(got.fingerprint)}"
                f" ({owner}'s)")
    return seen


def show_kubectl(lab: nslab.Lab) -> None:
    """The real kubectl in the client namespace, through the VIP (server https://VIP:6443)."""
    title("kubectl through the VIP (the lab CA verifies whichever apiserver answers)")
    prefix = f"kubectl --kubeconfig {lab.client_kubeconfig.name}"
    for args in (("get", "--raw", "/readyz"), ("get", "endpoints", "kubernetes")):
        done = nslab.wait_for(lambda a=args: lab.kubectl(*a), 30,  # type: ignore[misc]
                              f"kubectl {' '.join(args)} through the VIP")
        shown(f"{prefix} {' '.join(args)}", done.stdout)


def show_logs(lab: nslab.Lab, lines: int = 12) -> None:
    for proc in lab.state.processes:
        text = proc.output().rstrip().splitlines()[-lines:]
        if text:
            say(f"--- last lines of {proc.node}'s {proc.role} ({proc.log})")
            for line in text:
                say(f"  {line}")


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """Ignore Ctrl-C while tearing down (a second Ctrl-C must not leave half a lab)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def tear_down(lab: nslab.Lab) -> None:
    with no_interrupts():
        done = lab.down()
    stopped = sum(1 for line in done if line.startswith(("stopped", "killed")))
    deleted = sum(1 for line in done if line.startswith("deleted"))
    say(f"stopped {stopped} processes, deleted {deleted} namespaces; nothing of the lab is left")


def bring_up(lab: nslab.Lab) -> float:
    try:
        return lab.up()
    except BaseException:
        say("the lab did not come up; logs, then cleaning up:")
        show_logs(lab)
        with contextlib.suppress(Exception):
            tear_down(lab)
        raise


# --- commands -------------------------------------------------------------------------------

@lab.command()
@_build_options
@_state_dir_option
def up(mode: str, apiserver: str, controllers: int, topology: Path, subnet: str, prefix: str,
       state_dir: Path) -> None:
    """Build the lab and leave it running (see `status`, `failover`, `down`)."""
    the_lab = _plan(mode, controllers, topology, subnet, prefix, state_dir, apiserver)
    seconds = bring_up(the_lab)
    say(f"lab up in {seconds:.1f} s ({the_lab.mode.value} mode): VIP {the_lab.vip} on "
        f"{the_lab.holder()}; `ipvslb lab status` to look, `ipvslb lab down` to remove it")
    if the_lab.real:
        say(f"kubectl through the VIP: ip netns exec {the_lab.state.client.netns} kubectl "
            f"--kubeconfig {the_lab.client_kubeconfig} get endpoints kubernetes")


@lab.command()
@_state_dir_option
def status(state_dir: Path) -> None:
    """Who holds the VIP, what runs where, and answers through the VIP."""
    the_lab = nslab.Lab.load(state_dir)
    st = the_lab.state
    say(f"lab {st.prefix}: {st.mode} mode, subnet {st.subnet}, VIP {st.vip}, "
        f"client {st.client.netns} ({len(st.client.addresses)} addresses)")
    for member in st.controllers:
        agent = the_lab.proc("agent", member.name)
        standin = the_lab.proc("apiserver" if the_lab.real else "standin", member.name)
        holds = the_lab.vip in [a.split("/")[0] for a in the_lab.addresses(member.netns) or []]
        dummy = the_lab.dummy_addresses(member.name)
        vrrp = the_lab.vrrp_state(member.name)
        say(f"  {member.name:<8} {member.addresses[0]:<15} VRRP {vrrp:<7}"
            f" {'VIP' if holds else '   '}  agent "
            f"{'pid ' + str(agent.pid) if agent and agent.alive() else 'DOWN'}, keepalived "
            f"{','.join(map(str, the_lab.keepalived_pids(member.name))) or 'DOWN'}, "
            f"{'kube-apiserver' if the_lab.real else 'stand-in'} "
            f"{'up' if standin and standin.alive() else 'DOWN'}, dummyvip0 "
            f"{','.join(dummy) if dummy is not None else 'absent'}")
    title("ipvslb status of each agent")
    for member in st.controllers:
        say(f"  {member.name:<8} {agent_status(Path(member.run_dir))}")
    title("through the VIP")
    show_fetches(the_lab)


def agent_status(run_dir: Path) -> str:
    """One line of `ipvslb status` for a lab controller's agent."""
    from ipvslb.cli.status import fetch

    try:
        snap = fetch(run_dir, timeout=5.0)
    except UserError as err:
        return f"no answer: {err.message}"
    if "error" in snap:
        return f"refused: {snap['error']}"
    rotation = [b["address"] for b in snap["backends"] if b["inRotation"]]
    states = ",".join(f"{i['name']}={i['state']}" for i in snap["instances"])
    verdict = "healthy" if snap["healthy"] else "DEGRADED: " + "; ".join(snap["problems"])
    return (f"{verdict}; {states}; in rotation {','.join(rotation) or 'none'}; endpoints "
            f"{snap['source'].get('kind')} "
            f"{'in sync' if snap['source'].get('connected') else 'not in sync'}")


@lab.command()
@click.option("--how", type=click.Choice(["crash", "keepalived", "term"]), default="crash",
              show_default=True, help="crash: SIGKILL the holder's agent and keepalived; "
              "keepalived: SIGKILL keepalived only; term: stop its agent cleanly.")
@click.option("--restart/--no-restart", default=True, show_default=True,
              help="Start the node's `ipvslb up` again afterwards.")
@_state_dir_option
def failover(how: str, restart: bool, state_dir: Path) -> None:
    """Take the VIP holder down and show the VIP moving."""
    the_lab = nslab.Lab.load(state_dir)
    result = the_lab.failover(how, restart=restart)
    report_failover(the_lab, result)


def report_failover(lab: nslab.Lab, r: nslab.Failover) -> None:
    what = {"crash": "SIGKILL of its ipvslb agent and keepalived",
            "keepalived": "SIGKILL of its keepalived (the agent lives)",
            "term": "SIGTERM of its ipvslb agent (clean stop)"}[r.how]
    say(f"{r.old} held the VIP; {what} (pids {', '.join(map(str, r.killed))})")
    if r.new is None or r.vip_moved is None:
        say("the VIP did not move!")
        return
    served = f"{r.served:.3f} s" if r.served is not None else "never"
    say(f"VIP on {r.new} {r.vip_moved:.3f} s later; a request through the VIP sent after that "
        f"was answered {served} after the kill")
    if r.how == "crash" and r.restarted is None:
        say(f"{r.old} keeps its VIP too until its `ipvslb up` runs again (a SIGKILLed keepalived "
            "cannot remove it; clients follow the new master's gratuitous ARPs)")
    else:
        say(f"VIP on two controllers at once: {r.stale_vip:.3f} s with {r.old} still holding "
            f"it, {r.dual_masters:.3f} s between two others (dual masters)")


@lab.command()
@_state_dir_option
@click.option("--prefix", default=nslab.DEFAULT_PREFIX, show_default=True,
              help="Without a state file: remove namespaces named <prefix>-*.")
def down(state_dir: Path, prefix: str) -> None:
    """Stop everything the lab started (by pid) and delete its namespaces."""
    if nslab.Lab.exists(state_dir):
        tear_down(nslab.Lab.load(state_dir))
        return
    with no_interrupts():
        done = nslab.down_leftovers(prefix, state_dir)
    deleted = sum(1 for line in done if line.startswith("deleted"))
    say(f"no lab state in {state_dir}; " + (
        f"removed the {deleted} namespaces of a lab named {prefix} and what ran in them"
        if done else "nothing to do"))


@lab.command()
@_build_options
@_state_dir_option
@click.option("--vm", is_flag=True,
              help="Run the demo inside the project's QEMU guest (a kernel with IPVS).")
def demo(mode: str, apiserver: str, controllers: int, topology: Path, subnet: str, prefix: str,
         state_dir: Path, vm: bool) -> None:
    """The whole tour: build, VIP, load balancing, a failover, tear down."""
    if vm:
        sys.exit(run_in_vm(["demo", "--mode", mode, "--apiserver", apiserver,
                            "--controllers", str(controllers),
                            "--topology", str(Path(topology).resolve()), "--subnet", subnet,
                            "--prefix", prefix]))
    the_lab = _plan(mode, controllers, topology, subnet, prefix, state_dir, apiserver)
    try:
        tour(the_lab)
    except BaseException:
        if nslab.Lab.exists(state_dir):  # else bring_up showed the logs and cleaned up
            show_logs(the_lab)
        raise
    finally:
        if nslab.Lab.exists(state_dir):
            title("Tearing down")
            tear_down(the_lab)


def run_in_vm(args: list[str]) -> int:
    if not VM_RUNNER.exists():
        raise UserError(f"--vm needs the project's QEMU runner ({VM_RUNNER}); run from a clone "
                        "of the ipvslb repository")
    say("running the demo inside the project's QEMU guest (Debian's kernel, with IPVS); "
        "Python is slow there, this takes a few minutes")
    command = [str(VM_RUNNER), "--timeout", "1800", "--", sys.executable, "-m", "ipvslb",
               "lab", *args]
    return subprocess.run(command, check=False).returncode


def tour(lab: nslab.Lab) -> None:
    st = lab.state
    mode = lab.mode
    say(f"ipvslb lab demo: {len(st.controllers)} controllers and a client in network "
        f"namespaces, {mode.value} mode.")
    say(f"Only addresses inside these namespaces are used: subnet {st.subnet}, VIP {st.vip}.")

    title("Building the lab")
    say(f"namespaces: {', '.join(m.netns for m in st.controllers)}, {st.client.netns}, "
        f"{st.switch} (the bridge)")
    if lab.real:
        say("each controller: an etcd member (one three-member cluster), a real kube-apiserver "
            "(:6443, its own certificate with the VIP in its SANs) and `ipvslb up -c <its "
            "config>` (endpoints: kubernetes, a kubeconfig for its local apiserver) with real "
            "keepalived")
    else:
        say("each controller: an apiserver stand-in (HTTPS on :6443, its own certificate) and "
            "`ipvslb up -c <its config>` with real keepalived")
    seconds = bring_up(lab)
    holder = lab.holder()
    say(f"VIP {lab.vip} up and answering on {holder}, {seconds:.1f} s after the agents started")

    title("Only one controller holds the VIP")
    show_holders(lab)

    if mode is LabMode.USERSPACE:
        title("No dummyvip0 in userspace mode")
        for member in st.controllers:
            dummy = lab.dummy_addresses(member.name)
            where = "present: " + ",".join(dummy) if dummy else "absent"
            say(f"  {member.name}: dummyvip0 {where}")
        assert holder is not None
        title(f"The REDIRECT rule (iptables-save -t nat on {holder}; every controller has it)")
        shown(f"ip netns exec {lab.controller(holder).netns} iptables-save -t nat | grep IPVSLB",
              "\n".join(lab.iptables_rules(holder)))
    else:
        title("dummyvip0 holds the VIP/32 on every controller")
        for member in st.controllers:
            shown(f"ip -n {member.netns} -br addr show dev dummyvip0",
                  nslab.sh("ip", "-n", member.netns, "-br", "addr", "show", "dev", "dummyvip0",
                           check=False) or "(none)")
        for member in st.controllers:
            role = "master" if member.name == holder else "backup"
            title(f"`ipvslb show` on {member.name} ({role})")
            shown(f"ipvslb show --netns {member.netns}",
                  nslab.sh(sys.executable, "-m", "ipvslb", "show", "--netns", member.netns,
                           check=False))

    title(f"Through the VIP from the client, from {len(lab.sources())} source addresses")
    seen = show_fetches(lab, rounds=1)
    if len(seen) < len(st.controllers):
        seen |= show_fetches(lab, rounds=1)
    say(f"apiservers seen through the VIP: {', '.join(sorted(seen))} "
        f"({len(seen)} of {len(st.controllers)})")
    if lab.real:
        show_kubectl(lab)

    if len(st.controllers) < 2:
        say("(one controller: no failover to show)")
        return
    title(f"Failover: {holder} crashes (SIGKILL of its agent and keepalived)")
    result = lab.failover("crash", restart=False)
    report_failover(lab, result)
    show_holders(lab)
    if mode is LabMode.VIRTUAL_SERVERS and result.new is not None:
        new = result.new
        # until its notify hook switches them on, the new master answers for the VIP itself
        nslab.wait_for(lambda: lab.ipvs_rules(new), 60, f"the IPVS service on {new}")
        title(f"`ipvslb show` on the new master {new}")
        shown(f"ipvslb show --netns {lab.controller(new).netns}",
              nslab.sh(sys.executable, "-m", "ipvslb", "show", "--netns",
                       lab.controller(new).netns, check=False))
    title("Clients are still served")
    show_fetches(lab)
    if lab.real:
        show_kubectl(lab)

    title(f"{result.old} comes back: `ipvslb up` again")
    took = lab.restart_agent(result.old)
    say(f"it removed its stale VIP at start and rejoined as a backup, {took:.1f} s after it "
        f"was started (nopreempt: the VIP stays on {lab.holder()})")
    show_holders(lab)

    title(f"keepalived alone dies on {lab.holder()} (SIGKILL); its agent lives")
    second = lab.failover("keepalived")
    report_failover(lab, second)
    if second.stale_vip == 0:
        say("the agent removed the VIP the moment keepalived died (before any peer took it) "
            "and started a new keepalived")
    else:
        say(f"the agent removed the VIP {second.stale_vip:.3f} s after a peer took it (this "
            "machine is busy: the agent was not scheduled in time) and started a new keepalived")
    show_holders(lab)
