"""Proxy benchmark on loopback: direct vs HAProxy (default, splice) vs k0s-style vs ipvslb.

  .venv/bin/python bench/proxy/run.py [--short] [--variants] [--compare EARLIER.json]

One run measures every subject, repetitions interleaved: download throughput (1 and 8
streams), 64-byte request/response (1 and 16 connections, p50/p99 latency), new connections
per second (8 concurrent clients), the proxy's own CPU per GB/request/connection (the
headline), and its RSS holding 9,000 idle connections. Every figure is reported as the median
with min–max over the repetitions. With 2 or more CPUs the proxy under test runs alone on
the last CPU (taskset) and the backends, load generators and this script on the others.
Results: bench/results/proxy.{json,md} (full mode, about 12 minutes), proxy-short.* (--short,
CI, about a minute), proxy-variants.* (--variants: also
ipvslb's engines auto/copy/splice on asyncio and uvloop, a classic asyncio Protocol relay
(bench/proxy/protocol_relay.py) on asyncio, and HAProxy with one thread).

Everything runs on 127.0.0.1 with three echo/bulk backends (bench/proxy/backends.py) and the
load generators in bench/proxy/load.py; every process started here is stopped by its pid.
k0s-style is a small Go proxy with the design of k0s's userspace load balancer
(bench/proxy/k0s_style/main.go), built here with Debian's Go into ~/.cache/ipvslb/bench.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
HOST = "127.0.0.1"
DEFAULT_LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
K0S_SRC = HERE / "k0s_style"
CACHE = Path.home() / ".cache" / "ipvslb"
K0S_BIN = CACHE / "bench" / "k0s-style"
# k0s's systemd unit sets LimitNOFILE=999999; the Go proxy holds a splice pipe (2 fds) per
# direction, 6 fds per proxied connection, so it is given room for the idle test's 9,000
# where the benchmark may raise the hard limit (CAP_SYS_RESOURCE); meta records the limit.
K0S_NOFILE = 65_536

HAPROXY_CFG = """\
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend fe
    bind {host}:{port}
    default_backend be

backend be
    balance roundrobin
{extra}{servers}
"""

TESTS = [
    ("bulk1", ["bulk", "--streams", "1"]),
    ("bulk8", ["bulk", "--streams", "8"]),
    ("rr1", ["rr", "--conns", "1"]),
    ("rr16", ["rr", "--conns", "16"]),
    ("newconn", ["newconn", "--conns", "8"]),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def go_toolchain() -> str:
    go = "/usr/bin/go" if Path("/usr/bin/go").exists() else shutil.which("go")
    if go is None:
        raise SystemExit("bench/proxy: no Go toolchain (tests/setup installs golang-go)")
    return go


def build_k0s_style() -> tuple[Path, str]:
    """Build bench/proxy/k0s_style when the binary is missing or older than its sources."""
    go = go_toolchain()
    version = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60
                             ).stdout.strip()
    sources = [K0S_SRC / "main.go", K0S_SRC / "go.mod"]
    newest = max(src.stat().st_mtime for src in sources)
    if K0S_BIN.exists() and K0S_BIN.stat().st_mtime >= newest:
        return K0S_BIN, version
    K0S_BIN.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOCACHE": str(CACHE / "go-build"), "GOPATH": str(CACHE / "gopath"),
           "GOFLAGS": "", "GOPROXY": "off", "GO111MODULE": "on", "CGO_ENABLED": "0"}
    tmp = K0S_BIN.with_name(K0S_BIN.name + ".tmp")
    try:
        done = subprocess.run([go, "build", "-trimpath", "-o", str(tmp), "."], cwd=K0S_SRC,
                              env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise SystemExit("bench/proxy: building k0s-style timed out after 300 s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench/proxy: building k0s-style with {go} failed: {last}")
    tmp.replace(K0S_BIN)
    return K0S_BIN, version


def _k0s_limits() -> None:
    """Runs in the k0s-style child before exec: raise its file limit if allowed."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (K0S_NOFILE, K0S_NOFILE))
    except (ValueError, OSError):
        pass  # keep the benchmark's limit; the idle test reports what was held


@dataclass(frozen=True)
class Pinning:
    """CPUs of the proxy under test and of everything else (None: not pinned)."""

    subject_cpus: list[int] | None
    load_cpus: list[int] | None
    note: str

    def command(self, cmd: list[str]) -> list[str]:
        """``cmd`` started on the subject's CPUs (taskset execs it: same pid)."""
        if self.subject_cpus is None:
            return cmd
        return ["taskset", "-c", ",".join(map(str, self.subject_cpus)), *cmd]

    def apply_to_self(self) -> None:
        """Move this script, and so every child it starts unpinned, to the load CPUs."""
        if self.load_cpus is not None:
            os.sched_setaffinity(0, self.load_cpus)

    def as_meta(self) -> dict[str, Any]:
        return {"subject_cpus": self.subject_cpus, "load_cpus": self.load_cpus,
                "note": self.note}


def plan_pinning(enabled: bool) -> Pinning:
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled:
        return Pinning(None, None, "not pinned (--no-pin)")
    if len(cpus) < 2:
        return Pinning(None, None, f"not pinned: only {len(cpus)} CPU available, the proxy "
                       "shares it with the load generators and backends")
    if shutil.which("taskset") is None:
        return Pinning(None, None, "not pinned: no taskset (util-linux)")
    subject_cpus, load_cpus = cpus[-1:], cpus[:-1]
    return Pinning(subject_cpus, load_cpus,
                   f"proxy under test pinned to CPU {subject_cpus[0]} (taskset -c "
                   f"{subject_cpus[0]}), backends + load generators + this script to CPU "
                   f"{','.join(map(str, load_cpus))} (sched_setaffinity); other work on the "
                   "machine is not kept off either")


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` (ns, from schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass
    return total


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextmanager
def backends() -> Iterator[list[str]]:
    ports = [free_port() for _ in range(3)]
    procs = [subprocess.Popen([PY, str(HERE / "backends.py"), str(p)], stdout=subprocess.DEVNULL)
             for p in ports]
    try:
        for port, proc in zip(ports, procs, strict=True):
            wait_listening(port, proc)
        yield [f"{HOST}:{p}" for p in ports]
    finally:
        for proc in procs:
            stop(proc)


@contextmanager
def subject(name: str, targets: list[str], workdir: Path,
            pinning: Pinning) -> Iterator[tuple[list[str], int | None]]:
    """Start subject ``name`` on the subject CPUs; yields (addresses to load, pid or None)."""
    if name == "direct":
        yield targets, None
        return
    port = free_port()
    if name.startswith("haproxy"):
        splice = "    option splice-request\n    option splice-response\n"
        extra = splice if "splice" in name else ""
        servers = "".join(f"    server s{i} {t}\n" for i, t in enumerate(targets))
        cfg = workdir / f"{name}.cfg"
        one_thread = "global\n    nbthread 1\n\n" if name == "haproxy-1thread" else ""
        cfg.write_text(one_thread + HAPROXY_CFG.format(host=HOST, port=port, extra=extra,
                                                       servers=servers))
        cmd = ["haproxy", "-db", "-f", str(cfg)]
    elif name == "k0s-style":
        cmd = [str(K0S_BIN), "-listen", f"{HOST}:{port}", "-backends", ",".join(targets)]
    elif name.startswith("protocol-"):  # protocol-<loop>: the classic Protocol relay
        cmd = [PY, str(HERE / "protocol_relay.py"), "--port", str(port),
               "--loop", name.split("-")[1], *targets]
    else:  # ipvslb[-<loop>-<engine>]
        parts = name.split("-")
        loop, engine = (parts[1], parts[2]) if len(parts) == 3 else (DEFAULT_LOOP, "auto")
        cmd = [PY, str(HERE / "ipvslb_proxy.py"), "--port", str(port), "--loop", loop,
               "--engine", engine, *targets]
    proc = subprocess.Popen(pinning.command(cmd), stdout=subprocess.DEVNULL, cwd=ROOT,
                            preexec_fn=_k0s_limits if name == "k0s-style" else None)
    try:
        wait_listening(port, proc)
        yield [f"{HOST}:{port}"], proc.pid
    finally:
        stop(proc)


def load(args: list[str], addresses: list[str], seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [PY, str(HERE / "load.py"), *args, "--seconds", str(seconds), *addresses],
        capture_output=True, check=True, timeout=seconds + 60,
    )
    return dict(json.loads(out.stdout))


def idle_rss(addresses: list[str], pid: int, conns: int) -> dict[str, float]:
    """RSS before and while ``conns`` idle connections are held through the proxy."""
    load(["rr", "--conns", "16"], addresses, 0.5)  # warm up code paths and pools
    time.sleep(0.5)
    base = rss_kb(pid)
    holder = subprocess.Popen(
        [PY, str(HERE / "load.py"), "idle", "--conns", str(conns), *addresses],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        line = holder.stdout.readline()
        held = json.loads(line)["held"]
        time.sleep(1.0)
        loaded = rss_kb(pid)
        holder.stdin.close()
        holder.wait(60)
    finally:
        stop(holder)
    return {
        "held": held,
        "rss_base_mb": base / 1024,
        "rss_mb": loaded / 1024,
        "kb_per_conn": (loaded - base) / max(1, held),
    }


def proxy_info(pid: int) -> dict[str, Any]:
    """Threads, CPU affinity and file limit of a started proxy (what pinning etc. did)."""
    nofile = resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]
    return {"threads": len(list(Path(f"/proc/{pid}/task").iterdir())),
            "cpus": sorted(os.sched_getaffinity(pid)), "nofile": nofile}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(subjects: list[str], reps: int, seconds: float, idle_conns: int,
            pinning: Pinning) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {t: [] for t, _ in TESTS}
                                                         for s in subjects}
    memory: dict[str, dict[str, float]] = {}
    info: dict[str, dict[str, Any]] = {}
    loadavg_by_rep: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp, backends() as targets:
        workdir = Path(tmp)
        for rep in range(reps):
            loadavg_by_rep.append(loadavg())
            order = subjects[rep % len(subjects):] + subjects[:rep % len(subjects)]
            for name in order:
                with subject(name, targets, workdir, pinning) as (addresses, pid):
                    if pid and name not in info:
                        info[name] = proxy_info(pid)
                    for test, args in TESTS:
                        before = cpu_ns(pid) if pid else 0
                        result = load(args, addresses, seconds)
                        if pid:  # the proxy's own CPU (all threads) per unit of work
                            spent = cpu_ns(pid) - before
                            if "gbytes_total" in result:
                                result["cpu_ms_per_gb"] = spent / 1e6 / result["gbytes_total"]
                            elif test == "newconn":
                                result["cpu_us_per_conn"] = spent / 1e3 / result["requests_total"]
                            else:
                                result["cpu_us_per_req"] = spent / 1e3 / result["requests_total"]
                        runs[name][test].append(result)
                        print(f"rep {rep + 1}/{reps} {name:24} {test:8} {fmt(result)}",
                              file=sys.stderr, flush=True)
        for name in subjects:
            if name == "direct":
                continue
            with subject(name, targets, workdir, pinning) as (addresses, pid):
                assert pid is not None
                memory[name] = idle_rss(addresses, pid, idle_conns)
                print(f"idle {name:24} {fmt(memory[name])}", file=sys.stderr, flush=True)
    spread = report.spreads(runs)
    return {"runs": runs, "medians": report.medians_of(spread), "spread": spread,
            "memory": memory, "proxies": info, "loadavg_by_rep": loadavg_by_rep}


def fmt(result: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in result.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", action="store_true", help="CI mode: 1 repetition, 1 s tests")
    ap.add_argument("--variants", action="store_true",
                    help="also measure ipvslb's engines (auto/copy/splice) on asyncio and uvloop")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0,
                    help="niceness for every benchmark process (all subjects alike), to "
                         "reduce interference from other work on shared cores")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin the proxy under test and the load to separate CPUs")
    ap.add_argument("--compare", metavar="JSON",
                    help="an earlier run's results: report whether the two runs agree")
    ap.add_argument("--note", help="a remark on the run's conditions, kept in meta")
    ap.add_argument("--out", help="results path without suffix (default: bench/results/proxy, "
                    "proxy-short with --short, proxy-variants with --variants)")
    args = ap.parse_args()
    name = "proxy-variants" if args.variants else "proxy-short" if args.short else "proxy"
    args.out = args.out or str(RESULTS / name)
    previous = json.loads(Path(args.compare).read_text()) if args.compare else None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nice = os.nice(args.nice - os.nice(0))
    reps = args.reps or (1 if args.short else 5)
    seconds = args.seconds or (1.0 if args.short else 3.0)
    idle_conns = 2_000 if args.short else 9_000
    subjects = ["direct", "haproxy", "haproxy-splice", "k0s-style", "ipvslb"]
    if args.variants:
        # protocol-uvloop is left out: uvloop 0.23 aborted ("double free or corruption")
        # under the new-connection churn with that relay.
        subjects += ["haproxy-1thread", "protocol-asyncio"] + [
            f"ipvslb-{loop}-{engine}" for loop in ("asyncio", "uvloop")
            for engine in ("auto", "copy", "splice")]
    _, go_version = build_k0s_style()
    pinning = plan_pinning(not args.no_pin)
    pinning.apply_to_self()
    print(f"pinning: {pinning.note}", file=sys.stderr, flush=True)
    loadavg_start = loadavg()
    started = time.time()
    result = measure(subjects, reps, seconds, idle_conns, pinning)
    loadavg_end = loadavg()
    haproxy_version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True
                                     ).stdout.splitlines()[0]
    proxies = result.pop("proxies")
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "mode": "short" if args.short else "full",
            "reps": reps,
            "seconds": seconds,
            "idle_conns": idle_conns,
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "haproxy": haproxy_version,
            "ipvslb_loop": DEFAULT_LOOP,
            "go": go_version,
            "nofile": {n: i["nofile"] for n, i in proxies.items()},
            "nice": nice,
            "pinning": pinning.as_meta(),
            "threads": {n: i["threads"] for n, i in proxies.items()},
            "proxy_cpus": {n: i["cpus"] for n, i in proxies.items()},
            "loadavg_start": loadavg_start[0],
            "loadavg_end": loadavg_end[0],
            "loadavg_start_1_5_15": loadavg_start,
            "loadavg_end_1_5_15": loadavg_end,
            "loadavg_by_rep": result.pop("loadavg_by_rep"),
            "duration_s": round(time.time() - started, 1),
            **({"note": args.note} if args.note else {}),
        },
        **result,
    }
    report.finish(results, previous, args.compare)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(report.markdown(results))
    print(report.markdown(results))


if __name__ == "__main__":
    main()
