"""Benchmark backend: one epoll loop serving one loopback port.

A connection whose first bytes are ``BULK`` gets an endless stream of bytes until it closes;
any other connection is an echo. Runs until SIGTERM. Usage: backends.py PORT
"""

from __future__ import annotations

import resource
import select
import signal
import socket
import sys

CHUNK = 1 << 20
ZEROS = memoryview(bytes(CHUNK))


def serve(port: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    ep = select.epoll()
    lfd = listener.fileno()
    ep.register(lfd, select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    bulk: set[int] = set()
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)

    def drop(fd: int) -> None:
        ep.unregister(fd)
        socks.pop(fd).close()
        bulk.discard(fd)

    while not stop:
        try:
            events = ep.poll(0.5)
        except InterruptedError:
            continue
        for fd, ev in events:
            if fd == lfd:
                for _ in range(64):
                    try:
                        s, _addr = listener.accept()
                    except BlockingIOError:
                        break
                    s.setblocking(False)
                    socks[s.fileno()] = s
                    ep.register(s.fileno(), select.EPOLLIN)
                continue
            found = socks.get(fd)
            if found is None:
                continue
            s = found
            if fd in bulk:
                if ev & (select.EPOLLERR | select.EPOLLHUP):
                    drop(fd)
                    continue
                try:
                    s.send(ZEROS)
                except BlockingIOError:
                    pass
                except OSError:
                    drop(fd)
                continue
            try:
                n = s.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                drop(fd)
                continue
            if n == 0:
                drop(fd)
                continue
            if buf[:4] == b"BULK":
                bulk.add(fd)
                ep.modify(fd, select.EPOLLOUT)
                continue
            try:
                s.sendall(view[:n])  # echo replies are tiny: the socket buffer takes them
            except OSError:
                drop(fd)
    for s in socks.values():
        s.close()
    listener.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
