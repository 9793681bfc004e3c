"""Bounded loopback load generators; each prints one JSON object on stdout.

  load.py bulk    --streams N --seconds S TARGET...   download throughput
  load.py rr      --conns N   --seconds S TARGET...   64-byte request/response
  load.py newconn --conns N   --seconds S TARGET...   connect, 64 B echo, close
  load.py idle    --conns N               TARGET...   hold N echoed connections until stdin closes

TARGET is HOST:PORT; connections go to the targets in turn. Every run stops after its
``--seconds`` (plus a short warm-up), and every socket is closed at the end.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import select
import socket
import sys
import time

WARMUP = 0.5
MSG = b"x" * 64


def _targets(items: list[str]) -> list[tuple[str, int]]:
    out = []
    for item in items:
        host, port = item.rsplit(":", 1)
        out.append((host, int(port)))
    return out


def _connect(target: tuple[str, int]) -> socket.socket:
    s = socket.create_connection(target, timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def bulk(targets: list[tuple[str, int]], streams: int, seconds: float) -> dict[str, float]:
    """Download on ``streams`` connections at once (one thread, epoll: no GIL hand-offs)."""
    socks = [_connect(targets[i % len(targets)]) for i in range(streams)]
    ep = select.epoll()
    for s in socks:
        s.sendall(b"BULK")
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    buf = bytearray(1 << 20)
    total = 0
    start = time.perf_counter()
    measure_from, end = start + WARMUP, start + WARMUP + seconds
    at_start = None
    now = start
    while now < end:
        for fd, _ev in ep.poll(0.5):
            try:
                n = by_fd[fd].recv_into(buf)
            except BlockingIOError:
                continue
            if n == 0:
                raise SystemExit("bulk stream closed early")
            total += n
        now = time.perf_counter()
        if at_start is None and now >= measure_from:
            at_start, measure_from = total, now
    moved = total - (at_start or 0)
    elapsed = now - measure_from
    ep.close()
    for s in socks:
        s.close()
    return {"gbit_s": moved * 8 / elapsed / 1e9, "gbytes_total": total / 1e9}


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / 1000.0


def rr(targets: list[tuple[str, int]], conns: int, seconds: float) -> dict[str, float]:
    """Each connection keeps one 64-byte request outstanding; latency per request."""
    socks = [_connect(targets[i % len(targets)]) for i in range(conns)]
    for s in socks:
        s.setblocking(False)
    ep = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    got = dict.fromkeys(by_fd, 0)
    sent_at = dict.fromkeys(by_fd, 0)
    for fd, s in by_fd.items():
        ep.register(fd, select.EPOLLIN)
        sent_at[fd] = time.perf_counter_ns()
        s.send(MSG)
    lat: list[int] = []
    total = 0
    now = time.perf_counter_ns()
    measure_from = now + int(WARMUP * 1e9)
    end = measure_from + int(seconds * 1e9)
    measured = 0
    while now < end:
        for fd, _ev in ep.poll(1.0):
            s = by_fd[fd]
            data = s.recv(4096)
            if not data:
                raise SystemExit("connection closed by proxy during rr")
            got[fd] += len(data)
            if got[fd] >= 64:
                got[fd] -= 64
                now = time.perf_counter_ns()
                total += 1
                if now >= measure_from:
                    lat.append(now - sent_at[fd])
                    measured += 1
                sent_at[fd] = now
                s.send(MSG)
        now = time.perf_counter_ns()
    elapsed = (now - measure_from) / 1e9
    for s in socks:
        s.close()
    ep.close()
    lat.sort()
    return {
        "req_s": measured / elapsed,
        "p50_us": _percentile(lat, 0.50),
        "p99_us": _percentile(lat, 0.99),
        "requests_total": total,
    }


def newconn(targets: list[tuple[str, int]], conns: int, seconds: float) -> dict[str, float]:
    """``conns`` concurrent loops of: connect, send 64 B, read the echo, close."""
    ep = select.epoll()
    state: dict[int, tuple[socket.socket, int]] = {}  # fd -> (socket, phase 0=connecting 1=reading)
    turn = 0
    done = errors = measured = 0
    start = time.perf_counter()
    measure_from = start + WARMUP
    end = measure_from + seconds

    def open_one() -> None:
        nonlocal turn
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        code = s.connect_ex(targets[turn % len(targets)])
        turn += 1
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, "connect")
        state[s.fileno()] = (s, 0)
        ep.register(s.fileno(), select.EPOLLOUT)

    for _ in range(conns):
        open_one()
    now = time.perf_counter()
    while now < end:
        for fd, _ev in ep.poll(1.0):
            s, phase = state[fd]
            try:
                if phase == 0:
                    code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise OSError(code, "connect")
                    s.send(MSG)
                    state[fd] = (s, 1)
                    ep.modify(fd, select.EPOLLIN)
                    continue
                data = s.recv(4096)
                if len(data) < 64 and data:
                    continue  # rest of the echo follows
                if not data:
                    raise OSError(errno.ECONNRESET, "closed before echo")
                done += 1
                if time.perf_counter() >= measure_from:
                    measured += 1
            except OSError:
                errors += 1
            ep.unregister(fd)
            del state[fd]
            s.close()
            open_one()
        now = time.perf_counter()
    elapsed = now - measure_from
    for s, _phase in state.values():
        s.close()
    ep.close()
    return {"conn_s": measured / elapsed, "errors": errors, "requests_total": done}


def idle(targets: list[tuple[str, int]], conns: int) -> None:
    """Open ``conns`` connections, echo 64 B on each, report, hold them until stdin closes."""
    socks = []
    failed = 0
    for i in range(conns):
        if failed >= 3:
            break  # the proxy's connection limit: stop here, report what was held
        try:
            s = _connect(targets[i % len(targets)])
            s.settimeout(1.0)
            s.sendall(MSG)
            got = 0
            while got < 64:
                chunk = s.recv(64 - got)
                if not chunk:
                    raise OSError("closed")
                got += len(chunk)
            socks.append(s)
        except OSError:
            failed += 1
    print(json.dumps({"held": len(socks), "failed": failed}), flush=True)
    sys.stdin.read()
    for s in socks:
        s.close()


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["bulk", "rr", "newconn", "idle"])
    ap.add_argument("targets", nargs="+")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    targets = _targets(args.targets)
    seconds = min(args.seconds, 60.0)
    if args.mode == "bulk":
        result = bulk(targets, args.streams, seconds)
    elif args.mode == "rr":
        result = rr(targets, args.conns, seconds)
    elif args.mode == "newconn":
        result = newconn(targets, args.conns, seconds)
    else:
        idle(targets, min(args.conns, 9_500))
        return
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
