"""Node plumbing: the ``dummyvip0`` link and its addresses, VIPs on the VRRP interfaces,
sysctls, network namespaces, interface facts, iptables REDIRECT rules, systemd's notify
protocol.

Each module changes or reads one kind of kernel or system state, idempotently, and nothing
else. May import ``ipvslb.config`` and the shared modules; must not import any other ipvslb
package (the agent decides what to change; these modules only know how).
"""
