"""Where ipvslb's IPVS time goes: cProfile of a full apply and a table read, in the guest.

  tests/vm/run .venv/bin/python bench/ipvs/where_time_goes.py [SERVICES]

Applies SERVICES (default 200) TCP services x 3 real servers into an empty table in a fresh
namespace, then reads the table back, printing the top functions of each by cumulative and
own time. A diagnostic beside bench/ipvs/run.py (which measures against ipvsadm); it writes
no results file.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from run import Namespace, table  # noqa: E402

from ipvslb.ipvs.apply import Applier  # noqa: E402
from ipvslb.ipvs.netlink import IPVS  # noqa: E402
from ipvslb.ipvs.read import read_table  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    ns = Namespace(f"profile{n}")
    try:
        with IPVS(ns.name) as ipvs:
            for what, call, order in (
                    ("full apply", lambda: Applier(ipvs).apply(table(n)), "cumulative"),
                    ("table read", lambda: read_table(ipvs), "tottime")):
                before = ipvs.sent
                prof = cProfile.Profile()
                start = time.perf_counter()
                prof.enable()
                call()
                prof.disable()
                print(f"== {what} of {n} x 3: {time.perf_counter() - start:.3f} s, "
                      f"{ipvs.sent - before} requests/messages sent")
                pstats.Stats(prof).sort_stats(order).print_stats(20)
    finally:
        ns.close()


if __name__ == "__main__":
    main()
