"""Run and supervise keepalived: start, relay its output, reload, restart with backoff, stop.

keepalived runs in the foreground (``--dont-fork``) as the agent's child, under
``setpriv --pdeathsig TERM`` so that if the agent itself dies, keepalived is told to stop
gracefully (it releases its VIPs and peers take over at once) instead of holding the VIP with
nobody left to manage it. Its pid files live in the run directory; a keepalived left over by a
previous agent is found through them and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_exponential

from ipvslb import logfmt
from ipvslb.errors import SystemStateError, UserError
from ipvslb.files import executable_problem

log = logfmt.get("keepalived")
STOP_GRACE = 5.0
PID_FILES = ("keepalived.pid", "vrrp.pid", "checkers.pid")
# A keepalived that ran this long before dying is restarted at once (the backoff starts over).
STABLE_RUN = 60.0
# How long a reload asked for while keepalived starts waits for it to be ready.
READY_TIMEOUT = 60.0
# A keepalived that exits this many times in a row, each within QUICK_EXIT seconds of being
# started, can never run (bad binary, config it refuses): the agent gives up and says why.
MAX_QUICK_EXITS = 5
QUICK_EXIT = 5.0


class _Exited(Exception):
    """keepalived exited without being asked to."""


class _StableRunEnded(Exception):
    """keepalived exited after running long enough to count as healthy."""


def pid_from_file(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid > 0 else None


def is_keepalived(pid: int) -> bool:
    """Whether ``pid`` is a running keepalived (a zombie, dead but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    comm = stat[stat.find("(") + 1:stat.rfind(")")]
    state = stat[stat.rfind(")") + 2:].split()[:1]
    return comm == "keepalived" and state not in (["Z"], ["X"])


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait (bounded) for ``pids`` to exit; return those still alive."""
    import time

    deadline = time.monotonic() + timeout
    alive = [p for p in pids if is_keepalived(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if is_keepalived(p)]
    return alive


def stop_leftover(run_dir: Path, grace: float = STOP_GRACE) -> bool:
    """Stop a keepalived (and its children) recorded in ``run_dir``'s pid files.

    Graceful first (SIGTERM to the main process: it drops its VIPs), SIGKILL after ``grace``.
    Returns True when there was one. Pid files of processes that are not keepalived are ignored
    (a recycled pid is never signalled).
    """
    pids = [p for name in PID_FILES if (p := pid_from_file(run_dir / name)) and is_keepalived(p)]
    if not pids:
        return False
    log.warning("found a keepalived left by a previous agent; replacing it", extra={
        "pids": ",".join(map(str, pids))})
    with contextlib.suppress(ProcessLookupError):
        os.kill(pids[0], signal.SIGTERM)
    for pid in wait_gone(pids, grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(pids, 2.0)
    return True


def kill_children(run_dir: Path) -> None:
    """SIGKILL keepalived children whose parent died without taking them along."""
    for name in PID_FILES[1:]:
        pid = pid_from_file(run_dir / name)
        if pid and is_keepalived(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def clear_pid_files(run_dir: Path, timeout: float = 2.0) -> None:
    """Remove the pid files of keepalived processes that are gone, waiting (bounded) for them.

    A killed keepalived's children are reparented to init and stay zombies until init reaps
    them; keepalived counts a zombie named in its pid file as "daemon is already running" and
    exits, so a respawn would fail until then.
    """
    pids = [p for name in PID_FILES if (p := pid_from_file(run_dir / name))]
    wait_gone(pids, timeout)
    for name in PID_FILES:
        pid = pid_from_file(run_dir / name)
        if pid is not None and not is_keepalived(pid):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()


class Keepalived:
    """One supervised keepalived process."""

    def __init__(self, binary: str, run_dir: Path, conf: Path,
                 on_exit: Callable[[int], Awaitable[None]] | None = None,
                 netns: str | None = None, max_backoff: float = 30.0,
                 on_give_up: Callable[[BaseException], None] | None = None) -> None:
        self.binary = binary
        self.run_dir = run_dir
        self.conf = conf
        self.on_exit = on_exit
        self.netns = netns
        self.max_backoff = max_backoff
        self.on_give_up = on_give_up
        self.quick_exits = 0
        self.last_line = ""
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.reloads = 0
        self.started_at: float | None = None  # unix time the running process started
        self.last_exit_code: int | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._pending_reload: asyncio.Task[None] | None = None

    def command(self) -> list[str]:
        why = executable_problem(self.binary)
        if why:
            raise UserError(f"keepalived at {self.binary} {why}; install Debian's keepalived "
                            "package or set node.keepalivedPath to the keepalived program")
        cmd = [
            self.binary, "--dont-fork", "--use-file", str(self.conf), "--no-syslog",
            "--log-console", "--log-detail",
            "--pid", str(self.run_dir / "keepalived.pid"),
            "--vrrp_pid", str(self.run_dir / "vrrp.pid"),
            "--checkers_pid", str(self.run_dir / "checkers.pid"),
        ]
        setpriv = shutil.which("setpriv")
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    async def start(self) -> None:
        """Start supervising; returns once the first keepalived process is running."""
        self.command()  # fail early, with one clear line, if the binary is missing
        self._task = asyncio.create_task(self._supervise(), name="keepalived")
        await asyncio.wait({asyncio.ensure_future(self._started.wait()), self._task},
                           return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            self._task.result()

    async def _run_once(self) -> None:
        """Run keepalived until it exits; raise when that was not asked for."""
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(clear_pid_files, self.run_dir)
        began = loop.time()
        self.process = await asyncio.create_subprocess_exec(
            *self.command(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, env=self.environment(),
        )
        self.started_at = time.time()
        log.info("started keepalived", extra={"pid": self.process.pid})
        self._started.set()
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.last_line = line
                log.info(line)
        code = await self.process.wait()
        self.last_exit_code = code
        if self._stopping:
            return
        self.restarts += 1
        log.error("keepalived exited unexpectedly; cleaning up and restarting", extra={
            "exit_code": code, "restarts": self.restarts})
        kill_children(self.run_dir)
        if self.on_exit is not None:
            await self.on_exit(code)
        ran = loop.time() - began
        self.quick_exits = self.quick_exits + 1 if ran < QUICK_EXIT else 0
        if self.quick_exits >= MAX_QUICK_EXITS:
            raise SystemStateError(
                f"keepalived exited {self.quick_exits} times in a row within {QUICK_EXIT:g}s of "
                f"starting (last exit code {code}, last output: {self.last_line[:200]!r}); it "
                "cannot run with this node and config: check node.keepalivedPath, the "
                "interfaces and `ipvslb render`")
        if ran > STABLE_RUN:
            raise _StableRunEnded(code)
        raise _Exited(code)

    async def _supervise(self) -> None:
        while not self._stopping:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(_Exited),
                wait=wait_exponential(multiplier=0.2, max=self.max_backoff),
                stop=stop_never, reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._run_once()
            except _StableRunEnded:
                continue  # it ran long enough: restart at once, backoff starts over
            except (SystemStateError, UserError, OSError) as err:
                if not self._started.is_set() or self.on_give_up is None:
                    raise
                log.error(f"giving up on keepalived: {err}")
                self.on_give_up(err if isinstance(err, UserError) else SystemStateError(
                    f"keepalived cannot be started: {err}"))
            return

    def environment(self) -> dict[str, str]:
        """keepalived's environment: the agent's, with TMPDIR set to the run directory (where
        keepalived writes keepalived.json on its JSON signal; not a /tmp shared by every
        keepalived of the host) and without systemd's notify/watchdog variables, which are the
        agent's alone (keepalived would otherwise report READY for the agent's unit)."""
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
        env["TMPDIR"] = str(self.run_dir)
        return env

    @property
    def running(self) -> bool:
        proc = self.process
        return proc is not None and proc.returncode is None

    async def vrrp_json(self, timeout: float = 2.0) -> list[dict[str, Any]] | None:
        """keepalived's own VRRP state and counters (its JSON signal, ``keepalived.json``),
        or None when keepalived is not running or did not write the file within ``timeout``."""
        proc = self.process
        if proc is None or not self.running or not self.ready():
            return None
        path = self.run_dir / JSON_FILE
        before = _mtime(path)
        signum = await asyncio.to_thread(json_signal, self.binary)
        if signum is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await asyncio.sleep(0.02)
            if _mtime(path) != before:
                data = await asyncio.to_thread(_read_json, path)
                if data is not None:
                    return data
        return None

    def ready(self) -> bool:
        """Whether the running keepalived has set itself up: its pid file names it and its
        VRRP child runs. Before that a SIGHUP kills it (the default action of the signal,
        while `ip netns exec`/setpriv are still exec-ing or keepalived has not yet installed
        its handlers): seen at start-up on a slow machine, a reload right after the spawn."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return False
        child = pid_from_file(self.run_dir / "vrrp.pid")
        return (pid_from_file(self.run_dir / "keepalived.pid") == proc.pid
                and child is not None and is_keepalived(child))

    def reload(self) -> bool:
        """SIGHUP keepalived so it re-reads its files; False when it is not running. A
        keepalived still starting is reloaded as soon as it is ready (it may have read its
        files before they changed)."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return False
        if not self.ready():
            if self._pending_reload is None or self._pending_reload.done():
                self._pending_reload = asyncio.create_task(self._reload_when_ready(proc),
                                                           name="keepalived-reload")
            return True
        return self._hup(proc)

    def _hup(self, proc: asyncio.subprocess.Process) -> bool:
        # setpriv and `ip netns exec` exec keepalived: the child's pid is keepalived's.
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGHUP)
            self.reloads += 1
            log.info("reloaded keepalived (SIGHUP)")
            return True
        return False

    async def _reload_when_ready(self, proc: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while proc is self.process and proc.returncode is None and loop.time() < deadline:
            if self.ready():
                self._hup(proc)
                return
            await asyncio.sleep(0.05)
        # it exited (the next one reads the current files) or never became ready (the
        # supervisor's restart handles that)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Graceful stop (SIGTERM: VIPs dropped, peers take over), SIGKILL after ``grace``."""
        self._stopping = True
        if self._pending_reload is not None:
            self._pending_reload.cancel()
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                log.warning("keepalived did not stop in time; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.wait_for(proc.wait(), 5)
        kill_children(self.run_dir)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)
        for name in PID_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / name).unlink()


JSON_FILE = "keepalived.json"
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@functools.cache
def json_signal(binary: str) -> int | None:
    """The signal that makes this keepalived write keepalived.json (``--signum=JSON``); None
    when it is built without JSON support."""
    try:
        out = subprocess.run([binary, "--signum=JSON"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()
    return int(text) if out.returncode == 0 and text.isascii() and text.isdigit() else None


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _read_json(path: Path) -> list[dict[str, Any]] | None:
    """keepalived.json, or None while it is being written (not yet valid JSON)."""
    try:
        data = json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError):
        return None
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else None
