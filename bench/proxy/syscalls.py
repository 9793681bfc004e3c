"""System calls per new connection, counted with ``strace -c -f`` (noise-free, unlike CPU time).

  .venv/bin/python bench/proxy/syscalls.py [--seconds S] [--baseline REV ...] [--out PATH]

Each subject (HAProxy, ipvslb from this tree, and ipvslb as of each ``--baseline`` git
revision, extracted with ``git archive`` into a temporary directory) is started behind the
three benchmark backends; strace attaches to it (every thread) while ``load.py newconn`` runs
8 concurrent connect / 64 B echo / close loops for S seconds, and the counts are divided by
the connections completed. strace slows the subject, so only the counts mean anything.
Writes a Markdown table (default bench/results/proxy-syscalls.md).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import run

LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+)?\s*(\w+)\s*$")


def counts(strace_out: Path) -> dict[str, tuple[int, int]]:
    """syscall -> (calls, errors) from ``strace -c`` output."""
    found: dict[str, tuple[int, int]] = {}
    for line in strace_out.read_text().splitlines():
        m = LINE.match(line)
        if m and m.group(3) != "total":
            found[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return found


def traced(pid: int, address: str, seconds: float, workdir: Path, name: str
           ) -> tuple[dict[str, tuple[int, int]], int]:
    """Syscall counts of ``pid`` during a newconn run, and the connections it completed."""
    out = workdir / f"{name}.strace"
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached to every thread before the load starts
        result = run.load(["newconn", "--conns", "8"], [address], seconds)
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(30)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(5)
    if result["errors"]:
        raise SystemExit(f"{name}: {result['errors']} connections failed under strace")
    return counts(out), int(result["requests_total"])


def extract(rev: str, into: Path) -> Path:
    """ipvslb/ and bench/ of git revision ``rev`` in a directory of their own."""
    tree = into / f"tree-{rev}"
    tree.mkdir()
    data = subprocess.run(["git", "archive", rev, "ipvslb", "bench"], cwd=run.ROOT,
                          capture_output=True, check=True, timeout=60).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def short_rev(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=run.ROOT, text=True,
                          capture_output=True, check=True, timeout=30).stdout.strip()


def start(name: str, tree: Path | None, targets: list[str], workdir: Path
          ) -> tuple[subprocess.Popen[bytes], str]:
    port = run.free_port()
    if tree is None:  # HAProxy, as run.py configures it
        cfg = workdir / "haproxy.cfg"
        servers = "".join(f"    server s{i} {t}\n" for i, t in enumerate(targets))
        cfg.write_text(run.HAPROXY_CFG.format(host=run.HOST, port=port, extra="",
                                              servers=servers))
        cmd, env, cwd = ["haproxy", "-db", "-f", str(cfg)], None, workdir
    else:
        cmd = [run.PY, str(tree / "bench/proxy/ipvslb_proxy.py"), "--port", str(port),
               *targets]
        env, cwd = {**os.environ, "PYTHONPATH": str(tree)}, tree
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=cwd)
    try:
        run.wait_listening(port, proc)
        run.load(["newconn", "--conns", "8"], [f"{run.HOST}:{port}"], 0.3)  # warm up
    except BaseException:
        run.stop(proc)
        raise
    return proc, f"{run.HOST}:{port}"


def table(per_conn: dict[str, dict[str, float]], conns: dict[str, int]) -> str:
    names = list(per_conn)
    calls = sorted({c for v in per_conn.values() for c in v},
                   key=lambda c: -max(v.get(c, 0.0) for v in per_conn.values()))
    lines = ["| syscall | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for call in calls:
        cells = [f"{per_conn[n].get(call, 0.0):.2f}" for n in names]
        lines.append(f"| {call} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(
        f"**{sum(per_conn[n].values()):.2f}**" for n in names) + " |")
    lines.append("| connections traced | " + " | ".join(str(conns[n]) for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--baseline", action="append", default=[], metavar="REV",
                    help="also count ipvslb as of this git revision (repeatable)")
    ap.add_argument("--out", default=str(run.RESULTS / "proxy-syscalls.md"))
    args = ap.parse_args()
    per_conn: dict[str, dict[str, float]] = {}
    conns: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp, run.backends() as targets:
        workdir = Path(tmp)
        subjects: list[tuple[str, Path | None]] = [("haproxy", None)]
        subjects += [(f"ipvslb@{short_rev(rev)}", extract(rev, workdir))
                     for rev in args.baseline]
        subjects.append(("ipvslb (this tree)", run.ROOT))
        for name, tree in subjects:
            proc, address = start(name, tree, targets, workdir)
            try:
                found, done = traced(proc.pid, address, args.seconds, workdir,
                                     name.split(" ")[0])
            finally:
                run.stop(proc)
            per_conn[name] = {c: n / done for c, (n, _err) in found.items()}
            conns[name] = done
            print(f"{name}: {sum(per_conn[name].values()):.2f} syscalls per connection "
                  f"({done} connections)", file=sys.stderr, flush=True)
    haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True
                             ).stdout.splitlines()[0]
    text = (
        "# System calls per new connection\n\n"
        f"`bench/proxy/syscalls.py --seconds {args.seconds:g}"
        + "".join(f" --baseline {b}" for b in args.baseline) + "`, "
        + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        + f"; {haproxy}; Python {sys.version.split()[0]}.\n\n"
        "strace -c -f attached to the proxy while `load.py newconn --conns 8` ran "
        "(connect, 64 B echo, close); counts divided by the connections completed. "
        "Calls that failed (EAGAIN, EINPROGRESS) are counted too; epoll waits and "
        "HAProxy's clock reads depend on how many connections one wake-up serves.\n\n"
        + table(per_conn, conns) + "\n"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
