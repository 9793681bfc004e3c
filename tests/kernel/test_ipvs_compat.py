"""`ipvslb show` prints what the real ipvsadm 1.31 prints, byte for byte, on random tables.

Each random table (see ipvs_random.py) is loaded with the real `ipvsadm -R` into a fresh
namespace's IPVS, then every list option is printed by `ipvsadm -L -n OPTS` and by
`ipvslb show OPTS` (parsed by the real click command, run in-process because Python is
15-30x slower in the guest; the installed `ipvslb` entry point runs on the first tables).
IPVSLB_COMPAT_TABLES (default 200) and IPVSLB_COMPAT_SEED (default: random) control the run;
IPVSLB_COMPAT_FULL=1 compares every option on every table; a failure names the seed, table,
options and the restore input.
"""

from __future__ import annotations

import difflib
import os
import random
import select
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ipvslb.cmd_show import render, show
from ipvslb.errors import UserError
from tests.kernel.ipvs_random import RandomService, TableGenerator, kernel_schedulers, restore_input
from tests.support.netlab import NetLab, Netns, timeout_scale

pytestmark = pytest.mark.kernel

TABLES = int(os.environ.get("IPVSLB_COMPAT_TABLES", "200"))
SEED = int(os.environ.get("IPVSLB_COMPAT_SEED", str(random.SystemRandom().randrange(1 << 32))))
CLI_RUNS = 4  # comparisons also made through the installed `ipvslb` executable
FULL = os.environ.get("IPVSLB_COMPAT_FULL") == "1"

LIST_OPTIONS: list[list[str]] = [
    [],
    ["--stats"],
    ["--rate"],
    ["--thresholds"],
    ["--persistent-conn"],
    ["--nosort"],
    ["--stats", "--exact"],
    ["--rate", "--exact"],
    ["--tun-info"],
    ["--nosort", "--thresholds"],
    ["--stats", "--rate"],
    ["--thresholds", "--persistent-conn"],
    ["--tun-info", "--nosort"],
    ["--timeout"],
    ["-c"],
    ["-c", "--persistent-conn"],
    ["--daemon"],
]
SELECTOR_OPTIONS: list[list[str]] = [
    [],
    ["--stats"],
    ["--thresholds"],
    ["--persistent-conn"],
    ["--tun-info"],
    ["--nosort"],
]


def ipvslb_bin() -> str:
    found = Path(sys.executable).with_name("ipvslb")
    return str(found) if found.exists() else shutil.which("ipvslb") or "ipvslb"


def render_cli(netns: str, args: list[str]) -> str:
    """What `ipvslb show --netns NS ARGS` prints, through the real click command, in-process."""
    ctx = show.make_context("show", ["--netns", netns, *args])
    params = dict(ctx.params)
    params.pop("numeric")
    params.pop("sort")
    return render(**params)


class Shell:
    """One long-lived `sh` inside the namespace: running ipvsadm through it costs one fork+exec
    per command instead of also starting `ip netns exec` and a shell each time."""

    def __init__(self, netns: Netns, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns.name, "sh"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.count = 0

    def run(self, commands: list[str]) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.count += 1
        marker = f"__done_{self.count}__"
        self.proc.stdin.write("\n".join(commands) + f"\necho {marker}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 120 * timeout_scale())
        assert ready, f"ipvsadm commands did not finish: {commands}"
        line = self.proc.stdout.readline()
        assert line.strip() == marker, f"shell said {line!r}"

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def ipvsadm(self, restore: str, runs: list[list[str]], tag: str
                ) -> tuple[str, list[tuple[int, str, str]]]:
        """Flush and load the table with `ipvsadm -R`, then run `ipvsadm ARGS` for each run."""
        d = self.workdir
        (d / f"{tag}.restore").write_text("-C\n" + restore)
        script = [f"ipvsadm -R < {d}/{tag}.restore 2> {d}/{tag}.restore.err"]
        for i, args in enumerate(runs):
            script.append(f"ipvsadm {shlex.join(args)} > {d}/{tag}.{i}.out "
                          f"2> {d}/{tag}.{i}.err; echo $? > {d}/{tag}.{i}.rc")
        self.run(script)
        results = []
        for i in range(len(runs)):
            results.append((int((d / f"{tag}.{i}.rc").read_text()),
                            (d / f"{tag}.{i}.out").read_text(),
                            (d / f"{tag}.{i}.err").read_text()))
        return (d / f"{tag}.restore.err").read_text(), results


def compare(label: str, expected: str, got: str, context: str) -> None:
    if expected == got:
        return
    diff = "".join(
        difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "ipvsadm", "ipvslb")
    )
    pytest.fail(f"{label}: output differs\n{context}\n{diff!r}\n{diff}")


def pick_runs(rng: random.Random, services: list[RandomService]
              ) -> list[tuple[list[str], list[str]]]:
    """(ipvslb args, ipvsadm args) to compare on one table.

    Every ipvsadm run costs a process start (~0.1 s in the emulated guest), so each table
    gets the default listing, --save and one more: a random list option or, on half the
    tables with services, a service selected with -t/-u/--sctp-service/-f and a random
    option. Over 200 tables each option is compared several times; IPVSLB_COMPAT_FULL=1
    compares every option and every service on every table.
    """
    runs = [([], ["-L", "-n"]), (["--save"], ["-S", "-n"])]
    options = [o for o in LIST_OPTIONS if o]
    if FULL:
        runs += [(o, ["-L", "-n", *o]) for o in options]
        selected = services
    elif services and rng.random() < 0.5:
        selected = [rng.choice(services)]
    else:
        runs.append((o := rng.choice(options), ["-L", "-n", *o]))
        selected = []
    for svc in selected:
        opts = rng.choice(SELECTOR_OPTIONS)
        runs.append(([*svc.selector, *opts], ["-L", "-n", *svc.selector, *opts]))
    return runs


def test_random_tables_match_ipvsadm(netlab: NetLab, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    ns = netlab.netns("compat")
    shell = Shell(ns, tmp_path)
    generator = TableGenerator(rng, kernel_schedulers())
    checked: dict[str, int] = {}
    cli_runs = 0
    try:
        for index in range(TABLES):
            services: list[RandomService] = generator.table()
            restore = restore_input(services)
            runs = pick_runs(rng, services)
            restore_err, results = shell.ipvsadm(restore, [r[1] for r in runs], f"t{index}")
            context = (f"seed={SEED} (IPVSLB_COMPAT_SEED={SEED} IPVSLB_COMPAT_TABLES={index + 1}"
                       f" reproduces it), table #{index}, restore input:\n{restore}")
            assert restore_err == "", f"ipvsadm -R refused a line: {restore_err}\n{context}"
            for (args, their_args), (rc, expected, err) in zip(runs, results, strict=True):
                label = f"ipvslb show {shlex.join(args)} vs ipvsadm {shlex.join(their_args)}"
                assert rc == 0, f"{label}: ipvsadm failed ({rc}): {err}\n{context}"
                if "-c" in args:  # connection lines carry a live countdown; no traffic here
                    assert expected.count("\n") == 2, f"{label}: connections? {expected}"
                compare(label, expected, render_cli(ns.name, args), context)
                kind = " ".join(a for a in args if a.startswith("-") and a not in ("-6",))
                checked[kind] = checked.get(kind, 0) + 1
                if cli_runs < CLI_RUNS and len(services) > 2:
                    cli_runs += 1
                    done = subprocess.run([ipvslb_bin(), "show", "--netns", ns.name, *args],
                                          capture_output=True, text=True, timeout=120,
                                          check=False)
                    assert done.returncode == 0, f"{label} (executable): {done.stderr}"
                    compare(label + " (executable)", expected, done.stdout, context)
    finally:
        shell.close()
    assert cli_runs == CLI_RUNS
    print(f"seed {SEED}: {TABLES} random tables, {sum(checked.values())} outputs compared "
          f"({cli_runs} through the executable): {checked}")


def test_option_conflicts_are_refused_like_ipvsadm(netlab: NetLab) -> None:
    """ipvsadm refuses these list option combinations; ipvslb says so in one line too."""
    ns = netlab.netns("conflicts")
    for args in (
        ["-c", "--stats"],
        ["--timeout", "--rate"],
        ["--daemon", "--persistent-conn"],
        ["-c", "-t", "10.0.0.1:80"],
        ["--timeout", "--daemon"],
    ):
        done = subprocess.run(
            ["ip", "netns", "exec", ns.name, "ipvsadm", "-L", "-n", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0, f"ipvsadm accepted {args}"
        with pytest.raises(UserError):
            render_cli(ns.name, args)
