"""The IPVS layer: typed model, netlink client, reader, ipvsadm-identical formatter, applier.

Nothing here imports pyroute2: `ipvslb show` must start fast.
"""

from __future__ import annotations
