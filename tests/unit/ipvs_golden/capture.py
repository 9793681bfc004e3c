"""Capture golden outputs of the real ipvsadm 1.31 for the host unit tests.

Run in the QEMU guest (it needs IPVS):
    tests/vm/run .venv/bin/python tests/unit/ipvs_golden/capture.py
It loads table.restore with `ipvsadm -R` into a fresh namespace, stores the table as ipvslb
reads it (table.json: every field, in the kernel's order) and `ipvsadm OPTIONS` output for
each option set in outputs.json. tests/unit/test_ipvs_format.py formats table.json on the
host and compares with these outputs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ipvslb.ipvs.netlink import IPVS
from ipvslb.ipvs.read import read_table

HERE = Path(__file__).parent
NS = "ipvslb-golden"
OPTIONS = [["-L", "-n"], ["-S", "-n"], ["-L", "-n", "--stats"], ["-L", "-n", "--rate"],
           ["-L", "-n", "--stats", "--exact"], ["-L", "-n", "--thresholds"],
           ["-L", "-n", "--persistent-conn"], ["-L", "-n", "--nosort"],
           ["-L", "-n", "--tun-info"], ["-L", "-n", "--timeout"]]


def main() -> None:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    # IPv4 real servers need a local routing table in the namespace (lo up gives one)
    subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
    try:
        restore = (HERE / "table.restore").read_text()
        subprocess.run(["ip", "netns", "exec", NS, "ipvsadm", "-R"], input=restore, text=True,
                       check=True)
        with IPVS(NS) as ipvs:
            table = read_table(ipvs, stats=True)
            timeouts = ipvs.timeouts()
        doc = {"info": list(table.info or ()), "timeouts": list(timeouts),
               "services": [[*s[:10], [list(d[:13]) for d in s.dests]] for s in table.services]}
        (HERE / "table.json").write_text(json.dumps(doc, indent=1) + "\n")
        outputs = {" ".join(o): subprocess.run(["ip", "netns", "exec", NS, "ipvsadm", *o],
                                               capture_output=True, text=True,
                                               check=True).stdout for o in OPTIONS}
        (HERE / "outputs.json").write_text(json.dumps(outputs, indent=1) + "\n")
    finally:
        subprocess.run(["ip", "netns", "delete", NS], check=False)


if __name__ == "__main__":
    main()
