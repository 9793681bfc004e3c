"""A small, fast netlink socket: requests, dumps and batches with timeouts.

Built on the standard library's AF_NETLINK sockets (no pyroute2 here): the IPVS layer sends
thousands of tiny messages and `ipvslb show` must start fast on small nodes, where importing
pyroute2 alone costs seconds. Every receive has a timeout, so a kernel that never answers
cannot wedge the caller.
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
import struct
from collections.abc import Iterator, Sequence

from ipvslb import netns as netns_mod
from ipvslb.errors import SystemStateError

NETLINK_GENERIC = 16
NETLINK_ROUTE = 0

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_ERRNO = struct.Struct("=i")
RECV_SIZE = 65536
# A batch is sent in chunks no larger than this (the kernel refuses messages larger than the
# socket's send buffer, 208 KiB by default).
BATCH_BYTES = 96 * 1024
BATCH_MESSAGES = 512


class NetlinkError(OSError):
    """The kernel answered a request with an error (``errno`` is the positive error number)."""

    def __init__(self, code: int, what: str = "") -> None:
        super().__init__(code, os.strerror(code) + (f" ({what})" if what else ""))


class NetlinkTimeout(SystemStateError):
    pass


def align4(n: int) -> int:
    return (n + 3) & ~3


class Message:
    """One received netlink message: type, flags, seq and its payload (after the header)."""

    __slots__ = ("type", "flags", "seq", "data", "start", "end")

    def __init__(self, mtype: int, flags: int, seq: int, data: bytes, start: int, end: int
                 ) -> None:
        self.type = mtype
        self.flags = flags
        self.seq = seq
        self.data = data  # the whole receive buffer; the payload is data[start:end]
        self.start = start
        self.end = end


class NetlinkSocket:
    """A netlink socket of ``protocol``, opened in network namespace ``netns`` (None: current).

    ``sent`` counts the netlink messages written (requests and batch members).
    """

    def __init__(self, protocol: int, netns: str | None = None, timeout: float = 5.0) -> None:
        with netns_mod.entered(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      protocol)
        self.timeout = timeout
        self.netns = netns
        self.sock.settimeout(timeout)
        self.sock.bind((0, 0))
        try:  # errors carry only the failed request's header, not the whole request
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            pass
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
                break
            except OSError:
                continue
        self.pid = self.sock.getsockname()[0]
        self.seq = 0
        self.sent = 0
        self.buf = bytearray(RECV_SIZE)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    def encode(self, mtype: int, flags: int, payload: bytes, seq: int) -> bytes:
        return NLMSGHDR.pack(NLMSGHDR.size + len(payload), mtype, flags, seq, 0) + payload

    def send(self, data: bytes, count: int = 1) -> None:
        try:
            self.sock.send(data)
        except OSError as err:
            raise NetlinkError(err.errno or errno_mod.EIO, "send") from None
        self.sent += count

    def _recv_bytes(self) -> bytes:
        """One datagram."""
        try:
            n = self.sock.recv_into(self.buf)
        except TimeoutError:
            raise NetlinkTimeout(
                f"netlink: no answer from the kernel within {self.timeout:g}s") from None
        except OSError as err:
            raise NetlinkError(err.errno or errno_mod.EIO, "receive") from None
        return bytes(self.buf[:n])

    def _recv(self) -> Iterator[Message]:
        """Messages of one datagram."""
        data = self._recv_bytes()
        n = len(data)
        off = 0
        unpack = NLMSGHDR.unpack_from
        while off + 16 <= n:
            length, mtype, flags, seq, _pid = unpack(data, off)
            if length < 16 or off + length > n:
                break
            yield Message(mtype, flags, seq, data, off + 16, off + length)
            off += align4(length)

    def request(self, mtype: int, payload: bytes, flags: int = 0) -> list[Message]:
        """Send one request and return its answer(s).

        A dump (``flags`` has NLM_F_DUMP) returns every part; a plain request returns its
        reply, or [] when the kernel only acknowledged it. Errors raise NetlinkError.
        """
        seq = self.next_seq()
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        self.send(NLMSGHDR.pack(16 + len(payload), mtype,
                                NLM_F_REQUEST | NLM_F_ACK * (not dump) | flags, seq, 0)
                  + payload)
        out: list[Message] = []
        unpack = NLMSGHDR.unpack_from
        while True:  # a tight loop: dumps of 10,000 services come through here
            data = self._recv_bytes()
            n = len(data)
            off = 0
            while off + 16 <= n:
                length, mt, fl, sq, _pid = unpack(data, off)
                if length < 16 or off + length > n:
                    break
                if sq == seq:  # else: a late answer to an earlier request that timed out
                    if mt == NLMSG_ERROR or (dump and mt == NLMSG_DONE):
                        code = _ERRNO.unpack_from(data, off + 16)[0] if length >= 20 else 0
                        if code:
                            raise NetlinkError(-code)
                        return out
                    if mt != NLMSG_NOOP:
                        out.append(Message(mt, fl, sq, data, off + 16, off + length))
                off += (length + 3) & ~3

    def batch(self, requests: Sequence[tuple[int, int, bytes]]) -> list[int]:
        """Send many change requests (type, flags, payload) in as few writes as possible.

        Returns one error number per request (0: done). Only the last message of each write
        asks for an acknowledgement; the kernel reports every failure anyway and handles the
        messages of one write in order, before the write returns.
        """
        errors = [0] * len(requests)
        i = 0
        while i < len(requests):
            if self.seq > 0xFFFF0000:  # keep one write's sequence numbers contiguous
                self.seq = 0
            chunk: list[bytes] = []
            size = 0
            first_seq = self.seq + 1
            j = i
            while j < len(requests) and len(chunk) < BATCH_MESSAGES and size < BATCH_BYTES:
                mtype, flags, payload = requests[j]
                last = j + 1 == len(requests) or len(chunk) + 1 == BATCH_MESSAGES or \
                    size + len(payload) + 16 >= BATCH_BYTES
                raw = self.encode(mtype, NLM_F_REQUEST | flags | (NLM_F_ACK if last else 0),
                                  payload, self.next_seq())
                chunk.append(raw)
                size += len(raw)
                j += 1
            last_seq = self.seq
            self.send(b"".join(chunk), len(chunk))
            done = False
            while not done:
                for msg in self._recv():
                    if msg.type != NLMSG_ERROR:
                        continue
                    if not first_seq <= msg.seq <= last_seq:
                        continue
                    code = _ERRNO.unpack_from(msg.data, msg.start)[0]
                    errors[i + msg.seq - first_seq] = -code
                    if msg.seq == last_seq:
                        done = True
            i = j
        return errors
