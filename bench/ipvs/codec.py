"""Encode/decode cost per IPVS message through pyroute2's message classes (host, no kernel).

    PYTHONPATH=. python bench/ipvs/codec.py [--n 3000]

Encode: ipvslb's model -> ipvsmsg -> bytes, as ``IPVS.run`` sends it (header set, encoded).
Decode: bytes as the kernel dumps them -> pyroute2's parse -> ipvslb's model, as ``show``.
Prints microseconds per message (median of 5 runs).
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pyroute2.netlink.nlsocket import Marshal  # noqa: E402

from ipvslb.ipvs import model  # noqa: E402
from ipvslb.ipvs import netlink as nl  # noqa: E402
from ipvslb.pyroute2_fixes import ipvsmsg  # noqa: E402


def encoded(msg: nl.Request, seq: int) -> bytes:
    msg["header"]["type"] = 30
    msg["header"]["flags"] = 5
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 1
    msg.encode()
    return bytes(msg.data)


def per_message(fn: Callable[[], int]) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        n = fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="messages per run")
    n = parser.parse_args().n
    svcs = [model.service("tcp", f"10.{i >> 8 & 255}.{i & 255}.1", 6443, persistence=60)
            for i in range(n)]
    dests = [model.dest(f"10.200.{i >> 8 & 255}.{i & 255}", 6443, weight=i % 7)
             for i in range(n)]

    def enc_services() -> int:
        for i, s in enumerate(svcs):
            encoded(nl.service_request(nl.CMD_NEW_SERVICE, s), i)
        return n

    def enc_dests() -> int:
        for i, d in enumerate(dests):
            encoded(nl.dest_request(nl.CMD_NEW_DEST, svcs[0], d), i)
        return n

    # replies as the kernel sends them (NEW_DEST with the DEST nest; the service key omitted)
    dest_dump = b"".join(encoded(nl.genl(nl.CMD_NEW_DEST, [["IPVS_CMD_ATTR_DEST",
                                                            {"attrs": nl.dest_attrs(d)}]]), i)
                         for i, d in enumerate(dests))
    svc_dump = b"".join(encoded(nl.genl(nl.CMD_NEW_SERVICE, [["IPVS_CMD_ATTR_SERVICE", {
        "attrs": nl.service_attrs(s)}]]), i) for i, s in enumerate(svcs))
    marshal = Marshal()
    marshal.msg_map[30] = ipvsmsg

    def dec_dests() -> int:
        out = [nl.decode_dest(m, model.AF_INET) for m in marshal.parse(dest_dump)]
        assert len(out) == n and out[5] == dests[5]
        return n

    def dec_services() -> int:
        out = [nl.decode_service(m) for m in marshal.parse(svc_dump)]
        assert len(out) == n and out[5] is not None and out[5].config == svcs[5].config
        return n

    print(f"per message, median of 5 runs of {n} (host)")
    print(f"encode service (NEW_SERVICE) {per_message(enc_services):8.1f} us")
    print(f"encode dest    (NEW_DEST)    {per_message(enc_dests):8.1f} us")
    print(f"decode service (dump)        {per_message(dec_services):8.1f} us")
    print(f"decode dest    (dump)        {per_message(dec_dests):8.1f} us")
    print(f"dest message {len(dest_dump) // n} bytes; struct check "
          f"{struct.calcsize('=IHHII')} header bytes")


if __name__ == "__main__":
    main()
