"""What ipvslb adds to or corrects in pyroute2 (0.9.x), in one place.

Each fix names the pyroute2 behaviour it adds or corrects and is written so it could be
offered upstream as it stands: a message class or a subclass in pyroute2's own style, no
private state touched. Every fix has a test on the real kernel (tests/kernel/) that fails
without it.
"""

from __future__ import annotations

# --- rtnetlink ---
#
# IPv6 address labels (RFC 6724, `ip addrlabel`): pyroute2 0.9.7 defines the message types
# RTM_NEWADDRLABEL/DELADDRLABEL/GETADDRLABEL (pyroute2.netlink.rtnl) but no message class
# for them and no IPRoute method, so its marshal decodes the kernel's replies as bare
# nlmsg (no fields, no attributes) and nothing can encode a request. ``ifaddrlblmsg`` is
# the kernel's struct ifaddrlblmsg (include/uapi/linux/if_addrlabel.h) with its two
# attributes; register it on a socket with ``register_policy(ADDRLABEL_POLICY)``.
# Test: tests/kernel/test_dummy.py (labels set, replaced and deleted; read back by `ip`;
# tests/unit/test_dummy_rtnl.py on the host kernel).
from pyroute2.netlink import nlmsg
from pyroute2.netlink.rtnl import (
    RTM_DELADDRLABEL,
    RTM_GETADDRLABEL,
    RTM_NEWADDRLABEL,
)


class ifaddrlblmsg(nlmsg):  # noqa: N801 (pyroute2's naming: the kernel's struct name)
    """struct ifaddrlblmsg { u8 family; u8 pad; u8 prefixlen; u8 flags; u32 index; u32 seq; }"""

    prefix = "IFAL_"
    fields = (
        ("family", "B"),
        ("__pad", "x"),
        ("prefixlen", "B"),
        ("flags", "B"),
        ("index", "I"),
        ("seq", "I"),
    )
    nla_map = (
        ("IFAL_UNSPEC", "none"),
        ("IFAL_ADDRESS", "ip6addr"),
        ("IFAL_LABEL", "uint32"),
    )


ADDRLABEL_POLICY: dict[int, type[nlmsg]] = {
    RTM_NEWADDRLABEL: ifaddrlblmsg,
    RTM_DELADDRLABEL: ifaddrlblmsg,
    RTM_GETADDRLABEL: ifaddrlblmsg,
}
