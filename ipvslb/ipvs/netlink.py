"""IPVS over generic netlink through pyroute2: ipvslb's model to and from pyroute2 messages.

The socket, framing, batching and the message classes are pyroute2's
(``pyroute2.netlink.generic.ipvs``), with the corrections ipvslb needs in
:mod:`ipvslb.pyroute2_fixes`. This module only converts between ipvslb's typed model
(:mod:`ipvslb.ipvs.model`) and those messages, and keeps the one-line errors.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError

from ipvslb.errors import SystemStateError
from ipvslb.ipvs.model import (
    AF_INET6,
    F_HASHED,
    Daemon,
    Dest,
    Info,
    Service,
    Stats,
    Timeouts,
)
from ipvslb.node import netns as netns_mod
from ipvslb.pyroute2_fixes import IPVSSocket, ipv4_netmask, ipvs_info_msg, ipvsmsg

CMD_NEW_SERVICE = 1
CMD_SET_SERVICE = 2
CMD_DEL_SERVICE = 3
CMD_GET_SERVICE = 4
CMD_NEW_DEST = 5
CMD_SET_DEST = 6
CMD_DEL_DEST = 7
CMD_GET_DEST = 8
CMD_NEW_DAEMON = 9
CMD_DEL_DAEMON = 10
CMD_GET_DAEMON = 11
CMD_SET_CONFIG = 12
CMD_GET_CONFIG = 13
CMD_SET_INFO = 14
CMD_GET_INFO = 15
CMD_ZERO = 16
CMD_FLUSH = 17

FWD_TUNNEL = 2
IPVS_GENL_VERSION = 1
# A batch is sent in writes of at most this many messages (the kernel refuses a write larger
# than the socket's send buffer; pyroute2 sets 1 MiB, a dest message is ~150 bytes).
BATCH_MESSAGES = 512

Request = ipvsmsg


class NetlinkError(OSError):
    """The kernel refused a request (``errno`` is the positive error number)."""

    def __init__(self, code: int, what: str = "") -> None:
        super().__init__(code, os.strerror(code) + (f" ({what})" if what else ""))


class NetlinkTimeout(SystemStateError):
    pass


# --- encoding -------------------------------------------------------------------------------

def service_key_attrs(svc: Service) -> list[list[Any]]:
    if svc.fwmark:
        return [["IPVS_SVC_ATTR_AF", svc.family], ["IPVS_SVC_ATTR_FWMARK", svc.fwmark]]
    return [["IPVS_SVC_ATTR_AF", svc.family], ["IPVS_SVC_ATTR_PROTOCOL", svc.protocol],
            ["IPVS_SVC_ATTR_ADDR", svc.address], ["IPVS_SVC_ATTR_PORT", svc.port]]


def netmask_value(family: int, netmask: int) -> int:
    """IPVS_SVC_ATTR_NETMASK's u32: IPv6 the prefix length, IPv4 the mask in network order."""
    return netmask if family == AF_INET6 else ipv4_netmask(netmask)


def service_attrs(svc: Service) -> list[list[Any]]:
    attrs = service_key_attrs(svc)
    attrs.append(["IPVS_SVC_ATTR_SCHED_NAME", svc.scheduler])
    if svc.pe_name:
        attrs.append(["IPVS_SVC_ATTR_PE_NAME", svc.pe_name])
    attrs += [["IPVS_SVC_ATTR_FLAGS", {"flags": svc.flags & ~F_HASHED, "mask": 0xFFFFFFFF}],
              ["IPVS_SVC_ATTR_TIMEOUT", svc.timeout],
              ["IPVS_SVC_ATTR_NETMASK", netmask_value(svc.family, svc.netmask)]]
    return attrs


def dest_key_attrs(d: Dest) -> list[list[Any]]:
    return [["IPVS_DEST_ATTR_ADDR_FAMILY", d.family], ["IPVS_DEST_ATTR_ADDR", d.address],
            ["IPVS_DEST_ATTR_PORT", d.port]]


def dest_attrs(d: Dest) -> list[list[Any]]:
    attrs = dest_key_attrs(d) + [
        ["IPVS_DEST_ATTR_FWD_METHOD", d.forward], ["IPVS_DEST_ATTR_WEIGHT", d.weight],
        ["IPVS_DEST_ATTR_U_THRESH", d.u_threshold], ["IPVS_DEST_ATTR_L_THRESH", d.l_threshold]]
    if d.forward == FWD_TUNNEL:
        attrs += [["IPVS_DEST_ATTR_TUN_TYPE", d.tun_type],
                  ["IPVS_DEST_ATTR_TUN_PORT", d.tun_port],
                  ["IPVS_DEST_ATTR_TUN_FLAGS", d.tun_flags]]
    return attrs


def genl(cmd: int, attrs: list[list[Any]] | None = None) -> ipvsmsg:
    msg = ipvsmsg()
    msg["cmd"] = cmd
    msg["version"] = IPVS_GENL_VERSION
    msg["attrs"] = attrs or []
    return msg


def service_request(cmd: int, svc: Service) -> ipvsmsg:
    """NEW/SET_SERVICE (full entry) or DEL/GET_SERVICE/ZERO (key only)."""
    full = cmd in (CMD_NEW_SERVICE, CMD_SET_SERVICE)
    return genl(cmd, [["IPVS_CMD_ATTR_SERVICE",
                       {"attrs": service_attrs(svc) if full else service_key_attrs(svc)}]])


def dest_request(cmd: int, svc: Service, d: Dest) -> ipvsmsg:
    body = dest_attrs(d) if cmd in (CMD_NEW_DEST, CMD_SET_DEST) else dest_key_attrs(d)
    return genl(cmd, [["IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(svc)}],
                      ["IPVS_CMD_ATTR_DEST", {"attrs": body}]])


# --- decoding -------------------------------------------------------------------------------

def _attrs(obj: Any) -> dict[str, Any]:
    return {name: value for name, value, *_ in obj["attrs"]}


def _top(msg: Any, name: str) -> dict[str, Any] | None:
    for attr in msg["attrs"]:
        if attr[0] == name:
            return _attrs(attr[1])
    return None


def decode_stats(obj: Any | None) -> Stats | None:
    if obj is None:
        return None
    a = _attrs(obj)
    return Stats(*(a.get(n, 0) for n in (
        "IPVS_STATS_ATTR_CONNS", "IPVS_STATS_ATTR_INPKTS", "IPVS_STATS_ATTR_OUTPKTS",
        "IPVS_STATS_ATTR_INBYTES", "IPVS_STATS_ATTR_OUTBYTES", "IPVS_STATS_ATTR_CPS",
        "IPVS_STATS_ATTR_INPPS", "IPVS_STATS_ATTR_OUTPPS", "IPVS_STATS_ATTR_INBPS",
        "IPVS_STATS_ATTR_OUTBPS")))


def decode_service(msg: Any, stats: bool = False) -> Service | None:
    a = _top(msg, "IPVS_CMD_ATTR_SERVICE")
    if a is None or "IPVS_SVC_ATTR_AF" not in a:
        return None
    family = a["IPVS_SVC_ATTR_AF"]
    fwmark = a.get("IPVS_SVC_ATTR_FWMARK", 0)
    if fwmark:
        protocol, address, port = 0, "", 0
    else:
        protocol = a["IPVS_SVC_ATTR_PROTOCOL"]
        address = a["IPVS_SVC_ATTR_ADDR"]
        port = a["IPVS_SVC_ATTR_PORT"]
    fl = a.get("IPVS_SVC_ATTR_FLAGS")
    flags = fl["flags"] & fl["mask"] if fl is not None else 0
    nm = a.get("IPVS_SVC_ATTR_NETMASK")
    if nm is None:
        netmask = 128 if family == AF_INET6 else 0xFFFFFFFF
    else:
        netmask = nm if family == AF_INET6 else ipv4_netmask(nm)
    st = None
    if stats:
        st = decode_stats(a.get("IPVS_SVC_ATTR_STATS64") or a.get("IPVS_SVC_ATTR_STATS"))
    return Service(family, protocol, address, port, fwmark,
                   a.get("IPVS_SVC_ATTR_SCHED_NAME", ""), flags & ~F_HASHED,
                   a.get("IPVS_SVC_ATTR_TIMEOUT", 0), netmask,
                   a.get("IPVS_SVC_ATTR_PE_NAME", ""), (), st)


def decode_dest(msg: Any, svc_family: int, stats: bool = False) -> Dest | None:
    a = _top(msg, "IPVS_CMD_ATTR_DEST")
    if a is None or "IPVS_DEST_ATTR_ADDR" not in a:
        return None
    g = a.get
    st = None
    if stats:
        st = decode_stats(g("IPVS_DEST_ATTR_STATS64") or g("IPVS_DEST_ATTR_STATS"))
    return Dest(a["IPVS_DEST_ATTR_ADDR"], g("IPVS_DEST_ATTR_PORT", 0),
                g("IPVS_DEST_ATTR_ADDR_FAMILY", svc_family), g("IPVS_DEST_ATTR_FWD_METHOD", 0),
                g("IPVS_DEST_ATTR_WEIGHT", 0), g("IPVS_DEST_ATTR_U_THRESH", 0),
                g("IPVS_DEST_ATTR_L_THRESH", 0), g("IPVS_DEST_ATTR_TUN_TYPE", 0),
                g("IPVS_DEST_ATTR_TUN_PORT", 0), g("IPVS_DEST_ATTR_TUN_FLAGS", 0),
                g("IPVS_DEST_ATTR_ACTIVE_CONNS", 0), g("IPVS_DEST_ATTR_INACT_CONNS", 0),
                g("IPVS_DEST_ATTR_PERSIST_CONNS", 0), st)


def decode_daemon(msg: Any) -> Daemon | None:
    a = _top(msg, "IPVS_CMD_ATTR_DAEMON")
    if a is None or "IPVS_DAEMON_ATTR_STATE" not in a:
        return None
    g = a.get
    return Daemon(a["IPVS_DAEMON_ATTR_STATE"], g("IPVS_DAEMON_ATTR_MCAST_IFN", ""),
                  g("IPVS_DAEMON_ATTR_SYNC_ID", 0), g("IPVS_DAEMON_ATTR_SYNC_MAXLEN", 0),
                  g("IPVS_DAEMON_ATTR_MCAST_GROUP6") or g("IPVS_DAEMON_ATTR_MCAST_GROUP", ""),
                  g("IPVS_DAEMON_ATTR_MCAST_PORT", 0), g("IPVS_DAEMON_ATTR_MCAST_TTL", 0))


def decode_info(msg: Any) -> Info | None:
    """A GET_INFO answer, re-read with the class that describes it (see ipvs_info_msg)."""
    info = ipvs_info_msg(msg.data, offset=msg.offset)
    info.decode()
    version = info.get_attr("IPVS_INFO_ATTR_VERSION")
    size = info.get_attr("IPVS_INFO_ATTR_CONN_TAB_SIZE")
    if version is None or size is None:
        return None
    return Info(version, size)


# --- the client -----------------------------------------------------------------------------

NO_IPVS = ("this kernel has no IPVS (ip_vs module not found); use a kernel with CONFIG_IP_VS "
           "or install its modules package")


def _modprobe_ip_vs() -> bool:
    """Load ip_vs as ipvsadm does; True if modprobe succeeded."""
    exe = shutil.which("modprobe") or next(
        (p for p in ("/sbin/modprobe", "/usr/sbin/modprobe") if os.path.exists(p)), None)
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-q", "--", "ip_vs"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _explain(err: OSError, what: str) -> SystemStateError:
    if err.errno == errno.EPERM:
        return SystemStateError(f"IPVS: {what}: permission denied; run as root "
                                "(IPVS needs CAP_NET_ADMIN)")
    return SystemStateError(f"IPVS: {what}: {os.strerror(err.errno or errno.EIO)}")


def _code(err: PyNetlinkError) -> int:
    return abs(int(err.code or errno.EIO))


def _open(netns: str | None, timeout: float) -> IPVSSocket | None:
    """pyroute2's IPVS socket (bound: the family resolved), or None if IPVS is not loaded.

    The socket is opened inside ``netns`` by this thread (setns, no fork) and keeps that
    namespace; pyroute2's own ``netns=`` forks a child per socket, which costs more than the
    whole of a small `ipvslb show`.
    """
    try:
        with netns_mod.entered(netns):
            return IPVSSocket(timeout=timeout)
    except PyNetlinkError as err:
        if _code(err) == errno.ENOENT:
            return None
        raise _explain(OSError(_code(err), ""), "resolving the IPVS netlink family") from None
    except TimeoutError:
        raise NetlinkTimeout(
            f"netlink: no answer from the kernel within {timeout:g}s") from None


class IPVS:
    """A connection to the kernel's IPVS in one network namespace.

    ``load``: run ``modprobe ip_vs`` when IPVS is missing (as ipvsadm does). Without it, or
    when loading fails, raises SystemStateError (see ``NO_IPVS``); ``IPVS.available`` checks
    without raising.
    """

    def __init__(self, netns: str | None = None, timeout: float = 5.0, load: bool = True
                 ) -> None:
        self.timeout = timeout
        self.changes = 0  # change messages sent (add/set/delete/flush/zero/config)
        sock = _open(netns, timeout)
        if sock is None and load and _modprobe_ip_vs():
            sock = _open(netns, timeout)
        if sock is None:
            raise SystemStateError(NO_IPVS)
        self.sock = sock

    @staticmethod
    def available(netns: str | None = None) -> bool:
        """True if IPVS is loaded (does not load it)."""
        try:
            IPVS(netns, load=False).close()
        except SystemStateError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> IPVS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sent(self) -> int:
        """Netlink messages sent so far (reads and changes)."""
        return self.sock.sent

    # -- conversations

    def _request(self, msg: ipvsmsg, dump: bool = False) -> list[Any]:
        """Raises pyroute2's NetlinkError for a refusal, NetlinkTimeout for no answer."""
        try:
            return self.sock.request(msg, dump)
        except TimeoutError:
            raise NetlinkTimeout(
                f"netlink: no answer from the kernel within {self.timeout:g}s") from None

    def _read(self, msg: ipvsmsg, what: str, dump: bool = False) -> list[Any]:
        try:
            return self._request(msg, dump)
        except PyNetlinkError as err:
            raise _explain(OSError(_code(err), ""), what) from None

    # -- reads

    def info(self) -> Info:
        for msg in self._read(genl(CMD_GET_INFO), "reading version"):
            info = decode_info(msg)
            if info is not None:
                return info
        raise SystemStateError("IPVS: the kernel's GET_INFO answer lacks version/size")

    def timeouts(self) -> Timeouts:
        for msg in self._read(genl(CMD_GET_CONFIG), "reading timeouts"):
            a = _attrs(msg)
            return Timeouts(*(a.get(t, 0) for t in (
                "IPVS_CMD_ATTR_TIMEOUT_TCP", "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN",
                "IPVS_CMD_ATTR_TIMEOUT_UDP")))
        raise SystemStateError("IPVS: no answer to GET_CONFIG")

    def services(self, stats: bool = False) -> list[Service]:
        """Every service (without real servers), in the kernel's order."""
        out = []
        for msg in self._read(genl(CMD_GET_SERVICE), "listing services", dump=True):
            svc = decode_service(msg, stats)
            if svc is not None:
                out.append(svc)
        return out

    def service(self, key: Service, stats: bool = False) -> Service | None:
        """The service with ``key``'s identity, or None."""
        try:
            replies = self._request(service_request(CMD_GET_SERVICE, key))
        except PyNetlinkError as err:
            if _code(err) == errno.ESRCH:
                return None
            raise _explain(OSError(_code(err), ""), "reading a service") from None
        for msg in replies:
            svc = decode_service(msg, stats)
            if svc is not None:
                return svc
        return None

    def dests(self, svc: Service, stats: bool = False) -> list[Dest]:
        """The real servers of ``svc`` in the kernel's order (empty if the service is gone)."""
        request = genl(CMD_GET_DEST, [["IPVS_CMD_ATTR_SERVICE",
                                       {"attrs": service_key_attrs(svc)}]])
        out = []
        for msg in self._read(request, "listing real servers", dump=True):
            d = decode_dest(msg, svc.family, stats)
            if d is not None:
                out.append(d)
        return out

    def daemons(self) -> list[Daemon]:
        out = []
        for msg in self._read(genl(CMD_GET_DAEMON), "listing sync daemons", dump=True):
            d = decode_daemon(msg)
            if d is not None:
                out.append(d)
        return out

    # -- changes

    def run(self, requests: Sequence[ipvsmsg]) -> list[int]:
        """Send change requests (from service_request/dest_request/...) in batches.

        Returns one errno per request (0 = done); never raises for a refused request.
        """
        errors: list[int] = []
        for i in range(0, len(requests), BATCH_MESSAGES):
            chunk = requests[i:i + BATCH_MESSAGES]
            try:
                errors += self.sock.batch(chunk)
            except TimeoutError:
                raise NetlinkTimeout(
                    f"netlink: no answer from the kernel within {self.timeout:g}s") from None
            except OSError as err:
                raise _explain(err, "sending changes") from None
            self.changes += len(chunk)
        return errors

    def change(self, request: ipvsmsg, what: str) -> None:
        """Send one change request; raise NetlinkError (with ``what``) if refused."""
        self.changes += 1
        try:
            self._request(request)
        except PyNetlinkError as err:
            code = _code(err)
            if code == errno.EPERM:
                raise _explain(OSError(code, ""), what) from None
            raise NetlinkError(code, what) from None

    def add_service(self, svc: Service) -> None:
        self.change(service_request(CMD_NEW_SERVICE, svc), f"add {svc.describe()}")

    def edit_service(self, svc: Service) -> None:
        self.change(service_request(CMD_SET_SERVICE, svc), f"edit {svc.describe()}")

    def delete_service(self, svc: Service) -> None:
        self.change(service_request(CMD_DEL_SERVICE, svc), f"delete {svc.describe()}")

    def add_dest(self, svc: Service, d: Dest) -> None:
        self.change(dest_request(CMD_NEW_DEST, svc, d), f"add {d.address} to {svc.describe()}")

    def edit_dest(self, svc: Service, d: Dest) -> None:
        self.change(dest_request(CMD_SET_DEST, svc, d), f"edit {d.address} in {svc.describe()}")

    def delete_dest(self, svc: Service, d: Dest) -> None:
        self.change(dest_request(CMD_DEL_DEST, svc, d),
                    f"delete {d.address} from {svc.describe()}")

    def flush(self) -> None:
        """Delete every service of this namespace (ipvsadm -C)."""
        self.change(genl(CMD_FLUSH), "flush")

    def zero(self, svc: Service | None = None) -> None:
        """Zero the counters of one service, or of all (ipvsadm -Z)."""
        self.change(service_request(CMD_ZERO, svc) if svc is not None else genl(CMD_ZERO),
                    "zero counters")

    def set_timeouts(self, tcp: int = 0, tcp_fin: int = 0, udp: int = 0) -> None:
        """ipvsadm --set; 0 leaves a value unchanged."""
        self.change(genl(CMD_SET_CONFIG, [["IPVS_CMD_ATTR_TIMEOUT_TCP", tcp],
                                          ["IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", tcp_fin],
                                          ["IPVS_CMD_ATTR_TIMEOUT_UDP", udp]]), "set timeouts")
