"""The IPVS table printed exactly as ipvsadm 1.31 prints it (numeric mode), plus JSON.

Every format string, padding and quirk below mirrors ipvsadm's list code, including:
trailing blanks on real-server lines, fwmarks printed as signed ints, " ()" for an sh/mh
scheduler that only has flag-3, 32-bit truncated real-server counters in --stats/--rate, and
its sort order. ipvsadm sorts with glibc's qsort (a top-down merge sort in glibc 2.36) and
compares addresses by *signed 32-bit subtraction*, which wraps: 192.168.0.1 sorts before
10.0.0.1, and with widely spread addresses the comparison is not even a consistent order, so
only a faithful merge sort with that comparator reproduces the output. When the comparator
happens to be consistent for the given entries (the usual case) an ordinary key sort gives
the identical result, much faster; see ``sort_services`` / ``sort_dests``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ipvslb.ipvs.model import (
    AF_INET,
    AF_INET6,
    F_ONEPACKET,
    F_PERSISTENT,
    F_SCHED1,
    F_SCHED2,
    F_SCHED3,
    F_SCHED_ALL,
    FORWARD_NAMES,
    Daemon,
    Dest,
    Info,
    Service,
    Stats,
    Timeouts,
)

T = TypeVar("T")

FWD_TUNNEL = 2
TUN_NAMES = ("ipip", "gue", "gre")
TUN_FLAG_NAMES = ("-c", "+c", "r+c")
TUN_FLAG_OPTS = ("--tun-nocsum", "--tun-csum", "--tun-remcsum")
_WRAP_LIMIT = 1 << 31


@dataclass(frozen=True)
class Format:
    """ipvsadm's list options (numeric output is implied)."""

    rule: bool = False  # --save
    stats: bool = False
    rate: bool = False
    thresholds: bool = False
    persistent_conn: bool = False
    nosort: bool = False
    exact: bool = False
    tun_info: bool = False


# --- sorting --------------------------------------------------------------------------------

def _int32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def _words(family: int, address: str) -> tuple[int, ...]:
    """An address as ipvsadm's comparators see it: 1 (IPv4) or 4 (IPv6) host-order u32 words."""
    if family == AF_INET6:
        raw = socket.inet_pton(AF_INET6, address)
        return (int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big"),
                int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big"))
    if not address:
        return (0,)
    return (int.from_bytes(socket.inet_pton(AF_INET, address), "big"),)


def merge_sort(items: Sequence[T], cmp: Callable[[T, T], int]) -> list[T]:
    """glibc 2.36 ``msort_with_tmp``: split n/2 | n - n/2, merge taking the left on cmp <= 0."""
    n = len(items)
    if n <= 1:
        return list(items)
    n1 = n // 2
    left = merge_sort(items[:n1], cmp)
    right = merge_sort(items[n1:], cmp)
    out: list[T] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if cmp(left[i], right[j]) <= 0:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    out.extend(left[i:])
    out.extend(right[j:])
    return out


def _spread_ok(values: Iterable[int]) -> bool:
    """True if signed 32-bit subtraction orders these unsigned values like plain comparison."""
    lo = hi = None
    for v in values:
        if lo is None or v < lo:
            lo = v
        if hi is None or v > hi:
            hi = v
    return lo is None or hi - lo < _WRAP_LIMIT  # type: ignore[operator]


# service sort key: fwmark, family, protocol, address words, port
_SvcKey = tuple[int, int, int, tuple[int, ...], int]


def _service_key(s: Service) -> _SvcKey:
    if s.fwmark:  # libipvs leaves protocol, address and port zero for fwmark services
        return (s.fwmark, s.family, 0, (0, 0, 0, 0) if s.family == AF_INET6 else (0,), 0)
    return (0, s.family, s.protocol, _words(s.family, s.address), s.port)


def _cmp_services(a: _SvcKey, b: _SvcKey) -> int:
    """libipvs ``ipvs_cmp_services``."""
    r = _int32(a[0] - b[0])
    if r:
        return r
    r = a[1] - b[1]
    if r:
        return r
    r = a[2] - b[2]
    if r:
        return r
    for x, y in zip(a[3], b[3], strict=False):
        r = _int32(x - y)
        if r:
            return r
    return a[4] - b[4]


def sort_services(services: Sequence[Service]) -> list[Service]:
    """Services in ``ipvsadm -L`` order."""
    keys = [_service_key(s) for s in services]
    consistent = _spread_ok(k[0] for k in keys)
    if consistent:
        for family, width in ((AF_INET, 1), (AF_INET6, 4)):
            for w in range(width):
                if not _spread_ok(k[3][w] for k in keys if k[1] == family):
                    consistent = False
    order = list(range(len(services)))
    if consistent:
        order.sort(key=keys.__getitem__)
    else:
        order = merge_sort(order, lambda i, j: _cmp_services(keys[i], keys[j]))
    return [services[i] for i in order]


_DestKey = tuple[int, tuple[int, ...], int]  # family, words (IPv4 padded to 4), port


def _dest_key(d: Dest) -> _DestKey:
    words = _words(d.family, d.address)
    return (d.family, words + (0, 0, 0) if len(words) == 1 else words, d.port)


def _cmp_dests(a: _DestKey, b: _DestKey) -> int:
    """libipvs ``ipvs_cmp_dests``: the first entry's family decides how many words count."""
    for w in range(4 if a[0] == AF_INET6 else 1):
        r = _int32(a[1][w] - b[1][w])
        if r:
            return r
    return a[2] - b[2]


def sort_dests(dests: Sequence[Dest]) -> list[Dest]:
    """Real servers in ``ipvsadm -L`` order."""
    if len(dests) <= 1:
        return list(dests)
    if all(d.family == AF_INET for d in dests):  # the common case, kept cheap
        pton = socket.inet_pton
        keyed = [(int.from_bytes(pton(AF_INET, d.address), "big"), d.port, i)
                 for i, d in enumerate(dests)]
        if max(keyed)[0] - min(keyed)[0] < _WRAP_LIMIT:
            keyed.sort()
            return [dests[k[2]] for k in keyed]
    keys = [_dest_key(d) for d in dests]
    families = {k[0] for k in keys}
    consistent = len(families) == 1
    if consistent:
        width = 4 if AF_INET6 in families else 1
        consistent = all(_spread_ok(k[1][w] for k in keys) for w in range(width))
    order = list(range(len(dests)))
    if consistent:
        order.sort(key=lambda i: (keys[i][1], keys[i][2]))
    else:
        order = merge_sort(order, lambda i, j: _cmp_dests(keys[i], keys[j]))
    return [dests[i] for i in order]


# --- text -----------------------------------------------------------------------------------

def _largenum(i: int, exact: bool) -> str:
    """ipvsadm ``print_largenum``."""
    if exact:
        text = str(i)
        return text.rjust(9 if len(text) <= 8 else len(text) + 1)
    if i < 100_000_000:
        return f"{i:9d}"
    if i < 1_000_000_000:
        return f"{i // 1000:8d}K"
    if i < 100_000_000_000:
        return f"{i // 1_000_000:8d}M"
    if i < 100_000_000_000_000:
        return f"{i // 1_000_000_000:8d}G"
    return f"{i // 1_000_000_000_000:8d}T"


def _sched_flags(s: Service) -> str:
    """ipvsadm ``print_sched_flags``."""
    names: list[str] = []
    if s.scheduler == "sh" or s.scheduler == "mh":
        if s.flags & F_SCHED1:
            names.append(f"{s.scheduler}-fallback")
        if s.flags & F_SCHED2:
            names.append(f"{s.scheduler}-port")
    else:
        for bit, name in ((F_SCHED1, "flag-1"), (F_SCHED2, "flag-2"), (F_SCHED3, "flag-3")):
            if s.flags & bit:
                names.append(name)
    return ",".join(names)


def _addrport(family: int, address: str, port: int) -> str:
    return f"[{address}]:{port}" if family != AF_INET else f"{address}:{port}"


def _v4_mask(netmask: int) -> str:
    return socket.inet_ntop(AF_INET, netmask.to_bytes(4, "big"))


def _proto_name(protocol: int) -> str:
    return {6: "TCP", 17: "UDP", 132: "SCTP"}.get(protocol, "?")


def _proto_option(protocol: int) -> str:
    return {6: "-t", 17: "-u", 132: "--sctp-service"}.get(protocol, "--xxx-service")


def _svc_name(s: Service, fmt: Format) -> str:
    if s.fwmark:
        mark = _int32(s.fwmark)
        if fmt.rule:
            return f"-f {mark} -6" if s.family == AF_INET6 else f"-f {mark}"
        return f"FWM  {mark} IPv6" if s.family == AF_INET6 else f"FWM  {mark}"
    vname = _addrport(s.family, s.address, s.port)
    if fmt.rule:
        return f"{_proto_option(s.protocol)} {vname}"
    name = f"{_proto_name(s.protocol):<4s} {vname}"
    return name if s.family == AF_INET6 else name[:33]


def _service_line(s: Service, name: str, fmt: Format) -> str:
    if fmt.rule:
        out = f"-A {name} -s {s.scheduler}"
        if s.flags & F_PERSISTENT:
            out += f" -p {s.timeout}"
            if s.family == AF_INET and s.netmask != 0xFFFFFFFF:
                out += f" -M {_v4_mask(s.netmask)}"
            if s.family == AF_INET6 and s.netmask != 128:
                out += f" -M {_int32(s.netmask)}"
        if s.pe_name:
            out += f" --pe {s.pe_name}"
        if s.flags & F_ONEPACKET:
            out += " -o"
        if s.flags & F_SCHED_ALL:
            out += " -b " + _sched_flags(s)
        return out
    if fmt.stats or fmt.rate:
        st = s.stats or Stats()
        values = st[0:5] if fmt.stats else st[5:10]
        return f"{name:<33s}" + "".join(_largenum(v, fmt.exact) for v in values)
    out = f"{name} {s.scheduler}"
    if s.flags & F_SCHED_ALL:
        out += f" ({_sched_flags(s)})"
    if s.flags & F_PERSISTENT:
        out += f" persistent {s.timeout}"
        if s.family == AF_INET and s.netmask != 0xFFFFFFFF:
            out += f" mask {_v4_mask(s.netmask)}"
        if s.family == AF_INET6 and s.netmask != 128:
            out += f" mask {_int32(s.netmask)}"
        if s.pe_name:
            out += f" pe {s.pe_name}"
    if s.flags & F_ONEPACKET:
        out += " ops"
    return out


def _tun_info(d: Dest) -> str | None:
    """ipvsadm ``fwd_tun_info`` (None: "n/a")."""
    if d.forward != FWD_TUNNEL:
        return None
    if d.tun_type == 0:
        return "ipip"
    if d.tun_type == 1:
        return f"gue:{d.tun_port}:{_index(TUN_FLAG_NAMES, d.tun_flags)}"[:15]
    if d.tun_type == 2:
        return f"gre:{_index(TUN_FLAG_NAMES, d.tun_flags)}"[:15]
    return None


def _index(names: Sequence[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else "(null)"


def _dest_line(svc_name: str, d: Dest, fmt: Format) -> str:
    dname = _addrport(d.family, d.address, d.port)
    if not fmt.rule and d.family != AF_INET6:
        dname = dname[:28]
    if fmt.rule:
        switch = {0: "-m", 2: "-i", 1: "-g", 3: "-g"}.get(d.forward, "(null)")
        head = f"-a {svc_name} -r {dname} {switch} -w {_int32(d.weight)}"
        if d.forward == FWD_TUNNEL:
            if d.tun_type == 2:
                return f"{head} --tun-type gre {_index(TUN_FLAG_OPTS, d.tun_flags)}"
            if d.tun_type == 1:
                return (f"{head} --tun-type gue --tun-port {d.tun_port} "
                        f"{_index(TUN_FLAG_OPTS, d.tun_flags)}")
            if d.tun_type == 0:
                return f"{head} --tun-type ipip"
        return head
    if fmt.stats or fmt.rate:
        # libipvs decodes a real server's 64-bit counters with its 32-bit reader: only the
        # byte counters keep 64 bits.
        st = d.stats or Stats()
        m = 0xFFFFFFFF
        if fmt.stats:
            values = (st.conns & m, st.inpkts & m, st.outpkts & m, st.inbytes, st.outbytes)
            return f"  -> {dname:<28s}" + "".join(_largenum(v, fmt.exact) for v in values)
        return (f"  -> {dname:<28s} {st.cps & m:8d} {st.inpps & m:8d} {st.outpps & m:8d}"
                + _largenum(st.inbps & m, fmt.exact) + _largenum(st.outbps & m, fmt.exact))
    if fmt.thresholds:
        return (f"  -> {dname:<28s} {d.u_threshold:<10d} {d.l_threshold:<10d} "
                f"{d.active_conns:<10d} {d.inactive_conns:<10d}")
    if fmt.persistent_conn:
        return (f"  -> {dname:<28s} {d.weight:<9d} {d.persist_conns:<11d} "
                f"{d.active_conns:<10d} {d.inactive_conns:<10d}")
    fwd = FORWARD_NAMES.get(d.forward, "(null)")
    if fmt.tun_info:
        return (f"  -> {dname:<28s} {fwd:<7s} {_tun_info(d) or 'n/a':<13s} "
                f"{_int32(d.weight):<6d} {d.active_conns:<10d} {d.inactive_conns:<10d}")
    return (f"  -> {dname:<28s} {fwd:<7s} {_int32(d.weight):<6d} {d.active_conns:<10d} "
            f"{d.inactive_conns:<10d}")


def title(fmt: Format) -> str:
    """ipvsadm ``print_title`` (empty for --save)."""
    if fmt.stats:
        return (f"{'Prot LocalAddress:Port':<33s} {'Conns':>8s} {'InPkts':>8s} {'OutPkts':>8s} "
                f"{'InBytes':>8s} {'OutBytes':>8s}\n  -> RemoteAddress:Port\n")
    if fmt.rate:
        return (f"{'Prot LocalAddress:Port':<33s} {'CPS':>8s} {'InPPS':>8s} {'OutPPS':>8s} "
                f"{'InBPS':>8s} {'OutBPS':>8s}\n  -> RemoteAddress:Port\n")
    if fmt.thresholds:
        return (f"{'Prot LocalAddress:Port':<33s} {'Uthreshold':<10s} {'Lthreshold':<10s} "
                f"{'ActiveConn':<10s} {'InActConn':<10s}\n  -> RemoteAddress:Port\n")
    if fmt.persistent_conn:
        return (f"{'Prot LocalAddress:Port':<33s} {'Weight':<9s} {'PersistConn':<11s} "
                f"{'ActiveConn':<10s} {'InActConn':<10s}\n  -> RemoteAddress:Port\n")
    if fmt.tun_info:
        return ("Prot LocalAddress:Port Scheduler Flags\n"
                "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn "
                "InActConn\n")
    if not fmt.rule:
        return ("Prot LocalAddress:Port Scheduler Flags\n"
                "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")
    return ""


def service_text(s: Service, fmt: Format) -> str:
    """One service and its real servers (ipvsadm ``print_service_entry``)."""
    name = _svc_name(s, fmt)
    lines = [_service_line(s, name, fmt)]
    dests = s.dests if fmt.nosort else sort_dests(s.dests)
    lines.extend(_dest_line(name, d, fmt) for d in dests)
    return "\n".join(lines) + "\n"


def header(info: Info) -> str:
    return f"IP Virtual Server version {info.version_text} (size={info.conn_table_size})\n"


def list_all(services: Sequence[Service], info: Info | None, fmt: Format) -> str:
    """``ipvsadm -L -n [options]`` (or ``-S -n`` with fmt.rule)."""
    parts = []
    if not fmt.rule:
        assert info is not None
        parts.append(header(info))
    ordered = services if fmt.nosort else sort_services(services)
    parts.append(title(fmt))
    parts.extend(service_text(s, fmt) for s in ordered)
    return "".join(parts)


def list_service(s: Service, fmt: Format) -> str:
    """``ipvsadm -L -n -t ADDR:PORT [options]``: title and the one service, no header."""
    return title(fmt) + service_text(s, fmt)


def timeouts_text(t: Timeouts) -> str:
    return f"Timeout (tcp tcpfin udp): {_int32(t.tcp)} {_int32(t.tcp_fin)} {_int32(t.udp)}\n"


def daemons_text(daemons: Sequence[Daemon]) -> str:
    """``ipvsadm -L --daemon`` (master first, then backup, as libipvs collects them)."""
    out = []
    for d in daemons[:2]:
        if d.state & 1:
            kind = "master"
        elif d.state & 2:
            kind = "backup"
        else:
            continue
        line = f"{kind} sync daemon (mcast={d.mcast_ifn}, syncid={_int32(d.syncid)}"
        if d.sync_maxlen:
            line += f", maxlen={d.sync_maxlen}"
        if d.mcast_group:
            line += f", group={d.mcast_group}"
        if d.mcast_port:
            line += f", port={d.mcast_port}"
        if d.mcast_ttl:
            line += f", ttl={d.mcast_ttl}"
        out.append(line + ")\n")
    return "".join(out)


# --- connections (/proc/net/ip_vs_conn) -----------------------------------------------------

def _pton(family: int, text: str) -> str | None:
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except OSError:
        return None


def _hex_addr(text: str) -> str:
    digits = ""
    for ch in text:  # strtoul(text, NULL, 16): leading hex digits only
        if ch not in "0123456789abcdefABCDEF":
            break
        digits += ch
    value = int(digits, 16) if digits else 0
    return socket.inet_ntop(AF_INET, (min(value, 0xFFFFFFFFFFFFFFFF) & 0xFFFFFFFF)
                            .to_bytes(4, "big"))


def _conn_pair(caddr: str, vaddr: str) -> tuple[int, str, str]:
    """ipvsadm ``print_conn``: the client address decides how both are parsed."""
    c6 = _pton(AF_INET6, caddr)
    if c6 is not None:
        return AF_INET6, c6, _pton(AF_INET6, vaddr) or "::"
    c4 = _pton(AF_INET, caddr)
    if c4 is not None:
        return AF_INET, c4, _pton(AF_INET, vaddr) or "0.0.0.0"
    return AF_INET, _hex_addr(caddr), _hex_addr(vaddr)


def _conn_dest(daddr: str) -> tuple[int, str]:
    d6 = _pton(AF_INET6, daddr)
    if d6 is not None:
        return AF_INET6, d6
    d4 = _pton(AF_INET, daddr)
    return (AF_INET, d4) if d4 is not None else (AF_INET, _hex_addr(daddr))


def _hex_port(text: str) -> int:
    try:
        return int(text, 16) & 0xFFFF
    except ValueError:
        return 0


def connections_text(proc_text: str, persistent_conn: bool = False) -> str:
    """``ipvsadm -L -n -c [--persistent-conn]`` from the text of /proc/net/ip_vs_conn."""
    out = ["IPVS connection entries\n"]
    if persistent_conn:
        out.append(f"pro expire {'state':<11s} {'source':<18s} {'virtual':<18s} "
                   f"{'destination':<18s} {'pe name':<16s} pe_data\n")
    else:
        out.append(f"pro expire {'state':<11s} {'source':<18s} {'virtual':<18s} destination\n")
    lines = proc_text.splitlines()[1:]
    for line in lines:
        f = line.split()
        if len(f) < 9:
            continue
        proto, caddr, cport, vaddr, vport, daddr, dport, state, expires = f[:9]
        cfam, ctext, vtext = _conn_pair(caddr, vaddr)
        dfam, dtext = _conn_dest(daddr)
        cname = _addrport(cfam, ctext, _hex_port(cport))
        vname = _addrport(cfam, vtext, _hex_port(vport))
        dname = _addrport(dfam, dtext, _hex_port(dport))
        try:
            secs = int(expires)
        except ValueError:
            secs = 0
        secs &= 0xFFFFFFFF
        expire = f"{secs // 60:02d}:{secs % 60:02d}"
        if persistent_conn and len(f) >= 11:
            out.append(f"{proto:<3s} {expire:<6s} {state:<11s} {cname:<18s} {vname:<18s} "
                       f"{dname:<16s} {f[9]:<18s} {f[10]}\n")
        else:
            out.append(f"{proto:<3s} {expire:<6s} {state:<11s} {cname:<18s} {vname:<18s} "
                       f"{dname}\n")
    return "".join(out)


# --- JSON -----------------------------------------------------------------------------------

def _stats_json(st: Stats | None) -> dict[str, Any] | None:
    if st is None:
        return None
    return {"connections": st.conns, "packets_in": st.inpkts, "packets_out": st.outpkts,
            "bytes_in": st.inbytes, "bytes_out": st.outbytes,
            "rate": {"connections_per_second": st.cps, "packets_in_per_second": st.inpps,
                     "packets_out_per_second": st.outpps, "bytes_in_per_second": st.inbps,
                     "bytes_out_per_second": st.outbps}}


def _family_name(family: int) -> str:
    return "ipv6" if family == AF_INET6 else "ipv4"


def dest_json(d: Dest) -> dict[str, Any]:
    out: dict[str, Any] = {
        "address": d.address, "port": d.port, "family": _family_name(d.family),
        "forward": {0: "masq", 1: "local", 2: "tunnel", 3: "route"}.get(d.forward,
                                                                      str(d.forward)),
        "weight": d.weight, "upper_threshold": d.u_threshold, "lower_threshold": d.l_threshold,
        "active_connections": d.active_conns, "inactive_connections": d.inactive_conns,
        "persistent_connections": d.persist_conns, "tunnel": None,
    }
    if d.forward == FWD_TUNNEL:
        out["tunnel"] = {"type": _index(TUN_NAMES, d.tun_type), "port": d.tun_port,
                         "checksum": {0: "none", 1: "csum", 2: "remcsum"}.get(d.tun_flags,
                                                                              "unknown")}
    out["stats"] = _stats_json(d.stats)
    return out


def service_json(s: Service, nosort: bool = False) -> dict[str, Any]:
    if s.family == AF_INET6:
        netmask: int | str = s.netmask
    else:
        netmask = _v4_mask(s.netmask)
    flags = []
    if s.flags & F_SCHED_ALL:
        flags = [n for n in _sched_flags(s).split(",") if n]
    dests = s.dests if nosort else sort_dests(s.dests)
    return {
        "protocol": _proto_name(s.protocol).lower() if not s.fwmark else None,
        "address": s.address or None, "port": s.port if not s.fwmark else None,
        "fwmark": s.fwmark or None, "family": _family_name(s.family),
        "scheduler": s.scheduler, "scheduler_flags": flags,
        "persistent": bool(s.flags & F_PERSISTENT),
        "persistence_timeout": s.timeout if s.flags & F_PERSISTENT else None,
        "netmask": netmask, "persistence_engine": s.pe_name or None,
        "one_packet": bool(s.flags & F_ONEPACKET),
        "stats": _stats_json(s.stats),
        "real_servers": [dest_json(d) for d in dests],
    }


def to_json(services: Sequence[Service], info: Info | None, nosort: bool = False,
            timeouts: Timeouts | None = None) -> str:
    ordered = services if nosort else sort_services(services)
    doc: dict[str, Any] = {}
    if info is not None:
        doc["version"] = info.version_text
        doc["connection_table_size"] = info.conn_table_size
    if timeouts is not None:
        doc["timeouts"] = {"tcp": timeouts.tcp, "tcp_fin": timeouts.tcp_fin,
                           "udp": timeouts.udp}
    doc["services"] = [service_json(s, nosort) for s in ordered]
    return json.dumps(doc, indent=2) + "\n"
