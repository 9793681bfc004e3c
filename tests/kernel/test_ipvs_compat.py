"""`ipvslb show` prints what the real ipvsadm 1.31 prints, byte for byte, on random tables.

Each random table (see ipvs_random.py) is loaded with the real `ipvsadm -R` into a
namespace's IPVS, then list options are printed by `ipvsadm -L -n OPTS` (in the same
`ipvsadm -R` process) and by `ipvslb show OPTS` (parsed by the real click command, run
in-process because Python is 15-30x slower in the guest; the installed `ipvslb` entry point
is compared a few times too).
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

from ipvslb.cli.show import render, show
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

    def ipvsadm(self, restore: str, runs: list[list[str]], tag: str) -> tuple[str, list[str]]:
        """Load the table and print every listing with ONE `ipvsadm -R` process.

        ipvsadm -R executes any ipvsadm command line it reads, listings included, so the
        input is: flush, fixed timeouts, the table, then each listing preceded by
        `-L -n --timeout`, whose fixed line separates the outputs. (A process start costs
        ~0.3 s in the loaded guest; this keeps 200 tables with many listings affordable.)
        Returns ipvsadm's stderr and each listing's output.
        """
        d = self.workdir
        lines = ["-C", f"--set {' '.join(map(str, TIMEOUTS))}", restore.rstrip("\n")]
        for args in runs:
            lines += ["-L -n --timeout", " ".join(args)]  # ipvsadm does not unquote
        lines.append("-L -n --timeout")
        (d / f"{tag}.in").write_text("\n".join(line for line in lines if line) + "\n")
        self.run([f"ipvsadm -R < {d}/{tag}.in > {d}/{tag}.out 2> {d}/{tag}.err"])
        text = (d / f"{tag}.out").read_text()
        outputs = []
        pos = _expect(text, 0, SEPARATOR)
        for args in runs:
            if "--timeout" in args:  # its output is the separator line itself
                outputs.append(SEPARATOR)
                pos = _expect(text, pos, SEPARATOR)
            else:
                end = text.find(SEPARATOR, pos)
                assert end >= 0, f"ipvsadm output ends early after {shlex.join(args)}:\n" \
                                 f"{text}\nstderr: {(d / f'{tag}.err').read_text()}\n" \
                                 f"input:\n{(d / f'{tag}.in').read_text()}"
                outputs.append(text[pos:end])
                pos = end
            pos = _expect(text, pos, SEPARATOR)
        assert pos == len(text), f"unexpected ipvsadm output after the listings: {text[pos:]}"
        return (d / f"{tag}.err").read_text(), outputs


TIMEOUTS = (7777, 7778, 7779)
SEPARATOR = "Timeout (tcp tcpfin udp): 7777 7778 7779\n"


def _expect(text: str, pos: int, what: str) -> int:
    assert text.startswith(what, pos), f"expected {what!r} at {pos} of ipvsadm output:\n{text}"
    return pos + len(what)


def compare(label: str, expected: str, got: str, context: str) -> None:
    if expected == got:
        return
    diff = "".join(
        difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "ipvsadm", "ipvslb")
    )
    pytest.fail(f"{label}: output differs\n{context}\n{diff!r}\n{diff}")


def pick_runs(rng: random.Random, services: list[RandomService], index: int
              ) -> list[tuple[list[str], list[str]]]:
    """(ipvslb args, ipvsadm args) to compare on one table.

    Every table gets the default listing, --save and a quarter of the other list options
    (a different quarter on each table, so every option is compared on 50 of 200 tables),
    plus one service selected with -t/-u/--sctp-service/-f and a random option.
    IPVSLB_COMPAT_FULL=1 compares every option and every service on every table.
    """
    runs = [([], ["-L", "-n"]), (["--save"], ["-S", "-n"])]
    options = [o for o in LIST_OPTIONS if o]
    chosen = options if FULL else options[index % 4::4]
    runs += [(o, ["-L", "-n", *o]) for o in chosen]
    selected = services if FULL else rng.sample(services, min(1, len(services)))
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
            runs = pick_runs(rng, services, index)
            restore_err, results = shell.ipvsadm(restore, [r[1] for r in runs], f"t{index}")
            context = (f"seed={SEED} (IPVSLB_COMPAT_SEED={SEED} IPVSLB_COMPAT_TABLES={index + 1}"
                       f" reproduces it), table #{index}, restore input:\n{restore}")
            assert restore_err == "", f"ipvsadm -R refused a line: {restore_err}\n{context}"
            for (args, their_args), expected in zip(runs, results, strict=True):
                label = f"ipvslb show {shlex.join(args)} vs ipvsadm {shlex.join(their_args)}"
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
