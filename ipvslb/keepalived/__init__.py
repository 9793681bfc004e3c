"""keepalived: the desired files (keepalived.conf and the virtual-server switch files rendered
from config, node facts and backends), the supervised keepalived process, and the per-instance
switch the ``notify`` hook runs so only the VRRP master carries its virtual servers.

May import ``ipvslb.config``, ``ipvslb.endpoints.source`` (the backend type), ``ipvslb.node``
(interface facts) and the shared modules. Must not import ``ipvs``, ``proxy``, ``status``,
``agent``, ``cli`` or ``lab``.
"""
