"""What the agent tells operators: the typed status snapshot, the status socket
(``<runDir>/status.sock``) that ``ipvslb status`` reads, and the Prometheus metrics.

Reads state; never changes the node. May import every library package (config, keepalived,
node, ipvs, endpoints); must not import ``cli`` or ``lab``, and imports ``ipvslb.agent`` only
for type checking.
"""
