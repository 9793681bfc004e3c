"""Turn a parsed YAML document into a validated ``Config``, collecting every problem.

Each problem is one line: ``<field path>: <what is wrong>; <the fix>``. All problems are
gathered before anything is reported, and nothing is written or changed when there is one.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ipvslb.config import model as c
from ipvslb.config.scalars import clean_text, parse_uint, printable_ascii, shown
from ipvslb.errors import ConfigError

MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")
# What keepalived may read as part of a directive's value: anything that could end the token
# or the line, open a block or start a comment is refused.
UNSAFE_CHARS = re.compile(r"[\s\"'{}#!\\]|[\x00-\x1f\x7f]")
DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_VRRP_INSTANCES = 255
MAX_PERSISTENCE = 2678400
MAX_AUTH_PASS = 8
MAX_STRING = 4096
# Characters keepalived's reader would treat specially in auth_pass (see keepalived_conf.tokens).
AUTH_FORBIDDEN = frozenset("\"'\\{}#!$")
IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# runDir goes into keepalived.conf (track file, include, notify command) and holds sockets.
RUN_DIR_RE = re.compile(r"/[A-Za-z0-9_./-]*")
MAX_RUN_DIR = 100
# Directories other programs share: ipvslb must never treat them as its own run directory.
SHARED_DIRS = frozenset({
    "/", "/tmp", "/var/tmp", "/run", "/var/run", "/run/user", "/run/lock", "/var/lock", "/etc",
    "/var", "/var/lib", "/usr", "/usr/local", "/home", "/root", "/opt", "/srv", "/mnt",
    "/media", "/boot", "/bin", "/sbin", "/lib", "/lib64", "/dev", "/dev/shm", "/proc", "/sys",
    "/var/log", "/var/cache", "/etc/keepalived",
})
# Nothing below these is ipvslb's; one level below these is a user's home or runtime dir.
NOTHING_BELOW = ("/proc/", "/sys/", "/dev/")
HOMES = ("/home", "/run/user")


class Problems:
    """Collects problems with the path of the field they concern."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.warnings: list[str] = []
        self._path: list[str] = []

    def path(self, name: str = "") -> str:
        parts = [*self._path, name] if name else list(self._path)
        text = ""
        for part in parts:
            text += part if part.startswith("[") or not text else f".{part}"
        return text

    @contextmanager
    def at(self, name: str) -> Iterator[None]:
        self._path.append(name)
        try:
            yield
        finally:
            self._path.pop()

    def add(self, name: str, message: str) -> None:
        where = self.path(name)
        self.items.append(f"{where}: {message}" if where else message)

    def warn(self, name: str, message: str) -> None:
        self.warnings.append(f"{self.path(name)}: {message}")


class Section:
    """Typed access to one mapping of the document, reporting into ``Problems``."""

    def __init__(self, data: Any, problems: Problems, known: tuple[str, ...]) -> None:
        self.problems = problems
        self.data: dict[str, Any] = {}
        if data is None:
            return
        if not isinstance(data, dict):
            problems.add("", f"must be a mapping, got {type_name(data)}")
            return
        self.data = data
        for key in data:
            if key not in known:
                name = key[:80] if isinstance(key, str) and clean_text(key) else shown(key)
                hint = close_match(name, known)
                fix = f"did you mean {hint!r}?" if hint else f"known fields: {', '.join(known)}"
                problems.add(name, f"unknown field; {fix}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def str_(self, key: str, default: str | None = None) -> str | None:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.problems.add(key, f"must be a string, got {type_name(value)}")
            return default
        if not clean_text(value) or len(value) > MAX_STRING:
            self.problems.add(key, f"{shown(value)} has control characters, invalid Unicode or "
                              f"more than {MAX_STRING} characters; write plain text")
            return default
        return value

    def int_(self, key: str, default: int | None, lo: int, hi: int, fix: str = "") -> int | None:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.add(key, f"must be a whole number from {lo} to {hi}, got "
                              f"{shown(value)}")
            return default
        if not lo <= value <= hi:
            self.problems.add(key, f"must be from {lo} to {hi}, got {shown(value)}{fix}")
            return default
        return value

    def bool_(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problems.add(key, f"must be true or false, got {shown(value)}")
            return default
        return value

    def list_(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.add(key, f"must be a list, got {type_name(value)}")
            return []
        return value


def type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def close_match(word: str, options: tuple[str, ...]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not found:
        lowered = {o.lower(): o for o in options}
        return lowered.get(word.lower())
    return found[0]


def parse_duration(value: Any) -> float | None:
    """Seconds from a Go-style duration ("1m", "1m30s", "500ms") or a plain number of seconds.

    None for anything else, including infinities, NaN and numbers too large for a float.
    """
    try:
        seconds = _duration(value)
    except (OverflowError, ValueError):
        return None
    return seconds if seconds is not None and math.isfinite(seconds) else None


def _duration(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    text, sign = value.strip(), 1.0
    if text[:1] in "+-":
        sign, text = (-1.0 if text[0] == "-" else 1.0), text[1:]
    if text == "0":
        return 0.0
    total, pos = 0.0, 0
    for match in DURATION_RE.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total if pos == len(text) and pos > 0 else None


def bounded_duration(problems: Problems, key: str, raw: Any, lo: float, hi: float,
                     example: str) -> float | None:
    """A duration from ``lo`` to ``hi`` seconds (finite: nan, inf and "1ns" would busy-loop
    or never run a check); None, with the problem recorded, otherwise."""
    value = parse_duration(raw)
    if value is None or not math.isfinite(value) or not lo <= value <= hi:
        problems.add(key, f"must be a duration from {_seconds(lo)} to {_seconds(hi)} such as "
                     f"{example}, got {shown(raw)}")
        return None
    return value


def _seconds(value: float) -> str:
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g}h"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}m"
    return f"{value:g}s" if value >= 1 else f"{value * 1000:g}ms"


def valid_ifname(name: str) -> str | None:
    """Why the kernel would refuse ``name`` as an interface name, or None when it is fine."""
    if not name:
        return "must not be empty"
    if len(name.encode()) > 15:
        return "must be at most 15 bytes (the kernel's IFNAMSIZ)"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if not IFNAME_RE.fullmatch(name):
        return ("may hold only ASCII letters, digits, '.', '_' and '-' (not first), as "
                "keepalived reads it")
    return None


def address_problem(ip: c.IPAddress) -> str | None:
    """Why ``ip`` cannot be used by keepalived, IPVS or the proxy, or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return "has a zone id (%...); give the address without it"
        if ip.ipv4_mapped is not None:
            return (f"is an IPv4-mapped IPv6 address; write the IPv4 address "
                    f"{ip.ipv4_mapped} instead")
    return None


def parse_ip(problems: Problems, name: str, value: Any, what: str) -> c.IPAddress | None:
    if not isinstance(value, str) or not value.strip():
        problems.add(name, f"must be {what}, got {shown(value)}")
        return None
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        problems.add(name, f"{shown(value)} is not {what}")
        return None
    why = address_problem(ip)
    if why:
        problems.add(name, f"{shown(value)} {why}")
        return None
    return ip


def _vrrp_instance(
    problems: Problems, raw: Any, index: int, used_vrids: dict[int, int]
) -> tuple[c.VrrpInstance | None, list[c.IPInterface]]:
    """The instance (None when it has problems) and the VIPs that parsed."""
    s = Section(raw, problems, (
        "virtualIPs", "interface", "virtualRouterID", "advertIntervalSeconds", "advertInterval",
        "authPass", "unicastSourceIP", "unicastPeers", "addressLabel",
    ))
    before = len(problems.items)

    vips: list[c.IPInterface] = []
    raw_vips = s.list_("virtualIPs")
    if not raw_vips and s.raw("virtualIPs") in (None, []):
        problems.add("virtualIPs", "is required; list at least one VIP as address/prefix, "
                     "e.g. [\"192.168.1.100/24\"]")
    for i, value in enumerate(raw_vips):
        with problems.at(f"virtualIPs[{i}]"):
            vip = _parse_vip(problems, value)
        if vip is not None:
            vips.append(vip)
    if len({v.version for v in vips}) > 1:
        problems.add("virtualIPs", "mixes IPv4 and IPv6; put the IPv6 VIPs in a VRRP instance "
                     "of their own")
    if len({v.ip for v in vips}) != len(vips):
        problems.add("virtualIPs", "lists the same address twice; remove the duplicate")

    interface, interface_mac = None, None
    iface = s.str_("interface")
    if iface is not None:
        if MAC_RE.match(iface):
            interface_mac = iface.lower().replace("-", ":")
        else:
            why = valid_ifname(iface)
            if why:
                problems.add("interface", f"{iface!r} {why}; give an interface name such as "
                             "eth0, or its MAC address")
            else:
                interface = iface

    vrid = s.int_("virtualRouterID", None, 1, 255)
    if vrid is None and not s.has("virtualRouterID"):
        vrid = c.DEFAULT_FIRST_VRID + index
        if vrid > 255:
            problems.add("virtualRouterID", f"the automatic value {vrid} is past 255; set "
                         "virtualRouterID explicitly (1-255) on this instance")
            vrid = None
    if vrid is not None:
        if vrid in used_vrids:
            problems.add("virtualRouterID", f"{vrid} is already used by vrrpInstances"
                         f"[{used_vrids[vrid]}]; every instance needs its own virtual router ID")
        else:
            used_vrids[vrid] = index

    version, advert = 3, c.DEFAULT_ADVERT_INTERVAL
    if s.has("advertIntervalSeconds") and s.has("advertInterval"):
        problems.add("advertInterval", "set together with advertIntervalSeconds; keep one: "
                     "advertIntervalSeconds (whole seconds, VRRPv2) or advertInterval "
                     "(fractional seconds, VRRPv3)")
    elif s.has("advertIntervalSeconds"):
        seconds = s.int_("advertIntervalSeconds", None, 1, 255,
                         "; VRRP advertisements need a positive interval")
        version, advert = 2, float(seconds or 1)
    elif s.has("advertInterval"):
        value = parse_duration(s.raw("advertInterval"))
        if value is not None and not math.isfinite(value):
            value = None
        off_grid = value is not None and abs(value * 100 - round(value * 100)) > 1e-6
        if value is None or not 0.01 <= value <= 40.95 or off_grid:
            problems.add("advertInterval", f"must be from 0.01 to 40.95 seconds in steps of 0.01 "
                         f"(VRRPv3), got {s.raw('advertInterval')!r}")
        else:
            advert = round(value, 2)

    auth = s.str_("authPass")
    if auth is not None:
        if not auth:
            problems.add("authPass", "is empty; set a password of 1 to 8 characters")
        elif len(auth.encode()) > MAX_AUTH_PASS:
            problems.add("authPass", "must be at most 8 bytes (keepalived PASS authentication)")
        elif not printable_ascii(auth) or AUTH_FORBIDDEN.intersection(auth):
            problems.add("authPass", "may hold only printable ASCII without spaces, quotes, "
                         "braces, '#', '!', '$' or '\\' (keepalived would misread it); choose "
                         "another password")
    if version == 2 and not auth:
        if not s.has("authPass"):
            problems.add("authPass", "is required with advertIntervalSeconds (VRRPv2); set a "
                         "password of 1 to 8 characters, the same on every node")
    elif version == 3 and auth:
        problems.warn("authPass", "is not used: VRRPv3 (fractional advertInterval, the default) "
                      "has no authentication; set advertIntervalSeconds to use VRRPv2 with it")

    peers: list[c.IPAddress] = []
    for i, value in enumerate(s.list_("unicastPeers")):
        ip = parse_ip(problems, f"unicastPeers[{i}]", value, "an IP address")
        if ip is not None:
            if ip in peers:
                problems.add(f"unicastPeers[{i}]", f"{ip} is listed twice; remove the duplicate")
            peers.append(ip)
    source = None
    if s.has("unicastSourceIP"):
        source = parse_ip(problems, "unicastSourceIP", s.raw("unicastSourceIP"), "an IP address")
    if peers and source is None and not s.has("unicastSourceIP"):
        problems.add("unicastSourceIP", "is required with unicastPeers; set this node's own "
                     "address on the VRRP interface")
    if source is not None and not peers and not s.has("unicastPeers"):
        problems.add("unicastPeers", "is empty while unicastSourceIP is set; list the other "
                     "controllers' addresses, or remove unicastSourceIP for multicast")
    if source is not None:
        for i, peer in enumerate(peers):
            if peer == source:
                problems.add(f"unicastPeers[{i}]", f"{peer} is this node's unicastSourceIP; list "
                             "only the other controllers")
    vip_ips = {v.ip for v in vips}
    for name, ip in [("unicastSourceIP", source)] + [
        (f"unicastPeers[{i}]", p) for i, p in enumerate(peers)
    ]:
        if ip is not None and ip in vip_ips:
            problems.add(name, f"{ip} is also a VIP; a node's own address can never be the VIP "
                         "(keepalived would delete it on failover)")
    family = vips[0].version if vips and len({v.version for v in vips}) == 1 else None
    for name, ip in [("unicastSourceIP", source)] + [
        (f"unicastPeers[{i}]", p) for i, p in enumerate(peers)
    ]:
        if ip is not None and family is not None and ip.version != family:
            problems.add(name, f"{ip} is IPv{ip.version} but the VIPs are IPv{family}; VRRP "
                         f"peers must use the VIPs' address family")

    label = c.DEFAULT_ADDRESS_LABEL
    if s.has("addressLabel"):
        if family == 4:
            problems.add("addressLabel", "applies only to IPv6 VIPs; remove it")
        got = s.int_("addressLabel", None, 0, 0xFFFFFFFE, " (0xFFFFFFFF is reserved)")
        label = got if got is not None else label

    if len(problems.items) != before or vrid is None or not vips:
        return None, vips
    return c.VrrpInstance(
        index=index, virtual_ips=tuple(vips), virtual_router_id=vrid, auth_pass=auth,
        interface=interface, interface_mac=interface_mac, advert_interval=advert,
        vrrp_version=version, unicast_source_ip=source, unicast_peers=tuple(peers),
        address_label=label,
    ), vips


def _parse_vip(problems: Problems, value: Any) -> c.IPInterface | None:
    example = "e.g. 192.168.1.100/24 (the VIP with its subnet's prefix length)"
    if not isinstance(value, str) or not value.strip():
        problems.add("", f"is empty; give the VIP as address/prefix, {example}")
        return None
    if "%" in value:
        problems.add("", f"{shown(value)} has a zone id (%...); give the VIP without it")
        return None
    if "/" not in value:
        problems.add("", f"{shown(value)} has no prefix length; write it as address/prefix, "
                     f"{example}")
        return None
    try:
        vip = ipaddress.ip_interface(value.strip())
    except ValueError:
        problems.add("", f"{shown(value)} is not an address/prefix; {example}")
        return None
    why = address_problem(vip.ip)
    if why:
        problems.add("", f"{shown(value)} {why}")
        return None
    if vip.ip.is_unspecified or vip.ip.is_multicast or vip.ip.is_loopback:
        problems.add("", f"{vip.ip} cannot be a VIP (unspecified, multicast or loopback); "
                     "pick an unused address of the nodes' subnet")
        return None
    return vip


def _virtual_server(
    problems: Problems, raw: Any, vips: set[c.IPAddress], seen: set[c.IPAddress]
) -> c.VirtualServer | None:
    s = Section(raw, problems, (
        "ipAddress", "delayLoop", "lbAlgo", "lbKind", "persistenceTimeoutSeconds",
    ))
    before = len(problems.items)
    ip = None
    if not s.has("ipAddress"):
        problems.add("ipAddress", "is required; set it to one of the VIPs, without prefix")
    else:
        ip = parse_ip(problems, "ipAddress", s.raw("ipAddress"), "an IP address (one of the VIPs, "
                      "without prefix)")
    if ip is not None:
        if ip not in vips:
            listed = ", ".join(sorted(str(v) for v in vips)) or "none"
            problems.add("ipAddress", f"{ip} is not one of the VIPs ({listed}); a virtual server "
                         "must listen on a VIP")
        if ip in seen:
            problems.add("ipAddress", f"{ip} has a virtual server already; remove the duplicate")
        seen.add(ip)
    delay = c.DEFAULT_DELAY_LOOP
    if s.has("delayLoop"):
        parsed = bounded_duration(problems, "delayLoop", s.raw("delayLoop"), 1.0, 3600.0,
                                  "5s or 1m")
        if parsed is not None:
            delay = parsed
    algo = s.str_("lbAlgo", "rr") or "rr"
    if algo not in c.LB_ALGOS:
        problems.add("lbAlgo", f"{shown(algo)} is not a scheduler; use one of "
                     f"{', '.join(c.LB_ALGOS)}")
    kind = s.str_("lbKind", "DR") or "DR"
    if kind not in c.LB_KINDS:
        problems.add("lbKind", f"{shown(kind)} is not a forwarding method; use one of "
                     f"{', '.join(c.LB_KINDS)}")
    persistence = s.int_("persistenceTimeoutSeconds", c.DEFAULT_PERSISTENCE, 1, MAX_PERSISTENCE)
    if len(problems.items) != before or ip is None:
        return None
    return c.VirtualServer(ip, delay, algo, kind, persistence or c.DEFAULT_PERSISTENCE)


def _node(problems: Problems, raw: Any, api_port: int | None) -> c.NodeSettings:
    s = Section(raw, problems, (
        "role", "apiServerPort", "runDir", "keepalivedPath", "dummyInterface", "priority",
        "kubeconfig", "apiserverHealth", "realServerCheck", "lvsSyncDaemon",
        "metrics",
    ))
    d = c.NodeSettings()
    role_text = s.str_("role", d.role.value) or d.role.value
    role = d.role
    try:
        role = c.Role(role_text)
    except ValueError:
        extra = ("; ipvslb runs on control-plane nodes only" if role_text in ("worker", "single")
                 else "")
        problems.add("role", f"{shown(role_text)} is not a node role; use controller or "
                     f"controller+worker{extra}")
    port = s.int_("apiServerPort", api_port or d.api_server_port, 1, 65535) or d.api_server_port
    run_dir = s.str_("runDir", d.run_dir) or d.run_dir
    why = run_dir_problem(run_dir)
    if why:
        problems.add("runDir", f"{shown(run_dir)} {why}")
    keepalived = s.str_("keepalivedPath", d.keepalived_path) or d.keepalived_path
    if not keepalived.startswith("/") or UNSAFE_CHARS.search(keepalived):
        problems.add("keepalivedPath", f"{shown(keepalived)} must be an absolute path without "
                     "whitespace, quotes, braces, '#' or '!'")
    dummy = s.str_("dummyInterface", d.dummy_interface) or d.dummy_interface
    why = valid_ifname(dummy)
    if why:
        problems.add("dummyInterface", f"{shown(dummy)} {why}")
    priority = s.int_("priority", None, 1, 254, "; VRRP priorities are 1-254 (255 is the "
                      "address owner's)")
    kubeconfig = s.str_("kubeconfig")
    with problems.at("apiserverHealth"):
        h = Section(s.raw("apiserverHealth"), problems,
                    ("enabled", "interval", "timeout", "rise", "fall"))
        hd = c.ApiserverHealth()
        times = {}
        for key, dflt in (("interval", hd.interval), ("timeout", hd.timeout)):
            val = (bounded_duration(problems, key, h.raw(key), 0.1, 600.0, "1s")
                   if h.has(key) else dflt)
            times[key] = dflt if val is None else val
        health = c.ApiserverHealth(
            enabled=h.bool_("enabled", hd.enabled),
            interval=times["interval"], timeout=times["timeout"],
            rise=h.int_("rise", hd.rise, 1, 100) or hd.rise,
            fall=h.int_("fall", hd.fall, 1, 100) or hd.fall,
        )
    check_text = s.str_("realServerCheck", d.real_server_check.value) or "tcp"
    check = d.real_server_check
    try:
        check = c.RealServerCheck(check_text)
    except ValueError:
        problems.add("realServerCheck", f"{shown(check_text)} is not a check; use tcp or https")
    return c.NodeSettings(
        role=role, api_server_port=port, run_dir=run_dir,
        keepalived_path=keepalived, dummy_interface=dummy, priority=priority,
        kubeconfig=kubeconfig, apiserver_health=health, real_server_check=check,
        lvs_sync_daemon=s.bool_("lvsSyncDaemon", d.lvs_sync_daemon),
        metrics_listen=_metrics_listen(problems, s.raw("metrics")),
    )


def _metrics_listen(problems: Problems, raw: Any) -> tuple[str, int] | None:
    """node.metrics.listen: "HOST:PORT" with HOST an IP address ([...] for IPv6)."""
    with problems.at("metrics"):
        m = Section(raw, problems, ("listen",))
        text = m.str_("listen")
        if text is None:
            return None
        host, sep, port_text = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = parse_uint(port_text, 1, 65535) if sep else None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if port is None or ip is None or "%" in host:
            problems.add("listen", f"{shown(text)} is not HOST:PORT with an IP address, e.g. "
                         "127.0.0.1:9450 (metrics are off unless this is set)")
            return None
        return str(ip), port


def _endpoints(problems: Problems, raw: Any, api_port: int) -> c.EndpointSettings:
    s = Section(raw, problems, ("source", "static"))
    text = s.str_("source", "kubernetes") or "kubernetes"
    try:
        kind = c.EndpointSourceKind(text)
    except ValueError:
        problems.add("source", f"{shown(text)} is not an endpoint source; use kubernetes or static")
        kind = c.EndpointSourceKind.KUBERNETES
    static: list[tuple[c.IPAddress, int]] = []
    seen: set[tuple[c.IPAddress, int]] = set()
    for i, value in enumerate(s.list_("static")):
        name = f"static[{i}]"
        address, port = _split_host_port(value, api_port)
        ip = parse_ip(problems, name, address, "an apiserver address (IP or IP:port, "
                      "[IPv6]:port)")
        if port is None:
            problems.add(name, f"{shown(value)} has a bad port; use IP or IP:port with port "
                         "1-65535")
        elif ip is not None:
            if ip.is_unspecified or ip.is_multicast:
                problems.add(name, f"{ip} cannot be an apiserver (unspecified or multicast)")
            elif (ip, port) in seen:
                problems.add(name, f"{shown(value)} is listed twice; remove the duplicate")
            else:
                seen.add((ip, port))
                static.append((ip, port))
    if kind is c.EndpointSourceKind.STATIC and not static and not s.has("static"):
        problems.add("static", "is required with source: static; list the apiserver addresses")
    if kind is c.EndpointSourceKind.KUBERNETES and static:
        problems.add("static", "is set but source is kubernetes; set source: static or remove "
                     "the list")
    return c.EndpointSettings(source=kind, static=tuple(static))


def loop_backend(ip: c.IPAddress, port: int, vips: set[c.IPAddress], proxy_port: int
                 ) -> str | None:
    """Why a backend would make ipvslb send clients back to itself (None: it would not):
    a VIP (the proxy or IPVS would connect to itself until file descriptors run out), or
    the userspace proxy's own port."""
    if ip in vips:
        return "is a VIP, not an apiserver; list the apiservers' own addresses"
    if port == proxy_port:
        return (f"uses the userspace proxy's port {proxy_port}; list the apiservers' own "
                "address and port")
    return None


def _split_host_port(value: Any, default_port: int) -> tuple[Any, int | None]:
    if not isinstance(value, str):
        return value, default_port
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        return text, default_port
    if not port_text:
        return host, default_port
    return host, parse_uint(port_text, 1, 65535)


def run_dir_problem(path: str) -> str | None:
    """Why ``path`` cannot be ipvslb's run directory, or None."""
    if len(path) > MAX_RUN_DIR or not RUN_DIR_RE.fullmatch(path):
        return (f"must be an absolute path of at most {MAX_RUN_DIR} characters of ASCII "
                "letters, digits, '.', '_', '-' and '/' (keepalived reads it); e.g. /run/ipvslb")
    if posixpath.normpath(path) != path or path.startswith("//"):
        return f"is not in normal form; write {posixpath.normpath(path)!r}"
    if path in SHARED_DIRS or path.startswith(NOTHING_BELOW) or posixpath.dirname(path) in HOMES:
        return ("is a directory other programs share (ipvslb creates, locks and empties its "
                "run directory); use a directory of ipvslb's own such as /run/ipvslb")
    return None


def check_backends(problems: Problems, where: str,
                   static: tuple[tuple[c.IPAddress, int], ...], vips: set[c.IPAddress],
                   servers: tuple[c.VirtualServer, ...], proxy_port: int,
                   api_port: int) -> None:
    """Backends that loop back into the load balancer, or that no virtual server can use.

    ``servers`` are the virtual servers in use (virtual-servers mode), on port ``api_port``.
    """
    for i, (ip, port) in enumerate(static):
        why = loop_backend(ip, port, vips, proxy_port)
        if why:
            problems.add(f"{where}[{i}]", f"{ip}:{port} {why}")
    kept = [vs for vs in servers if vs.lb_kind != "NAT"]
    for ip, port in static:
        if kept and port != api_port:
            problems.add(where, f"{ip}:{port} has another port than the virtual servers' "
                         f"{api_port}; {kept[0].lb_kind} forwarding keeps the port: use port "
                         f"{api_port} or lbKind NAT")
    families = {ip.version for ip, _ in static}
    for vs in servers:
        family = vs.ip_address.version
        if static and family not in families:
            problems.add(where, f"has no IPv{family} address for the virtual server "
                         f"{vs.ip_address}; IPVS forwards only within one address family: list "
                         f"IPv{family} apiserver addresses")


CPLB_FIELDS = ("enabled", "type", "keepalived")
KEEPALIVED_FIELDS = (
    "vrrpInstances", "virtualServers", "userSpaceProxyBindPort", "disableLoadBalancer",
    "configTemplateVRRP", "configTemplateVS",
)


def build_config(
    fmt: c.SourceFormat,
    cplb: Any,
    cplb_path: str,
    node: Any = None,
    endpoints: Any = None,
    api_port: int | None = None,
    external_address: str | None = None,
    role_override: str | None = None,
) -> c.Config:
    """Validate the pieces extracted from a document; raise ConfigError listing every problem."""
    problems = Problems()
    with problems.at("node"):
        if role_override is not None and (node is None or isinstance(node, dict)):
            node = dict(node or {}, role=role_override)
        node_settings = _node(problems, node, api_port)
    with problems.at("endpoints"):
        endpoint_settings = _endpoints(problems, endpoints, node_settings.api_server_port)

    instances: list[c.VrrpInstance] = []
    servers: list[c.VirtualServer] = []
    proxy_port, disable_lb = c.DEFAULT_PROXY_PORT, False
    with problems.at(cplb_path):
        if cplb is None:
            problems.add("", "is missing; add the control plane load balancing section with at "
                         "least one vrrpInstances entry")
        top = Section(cplb, problems, CPLB_FIELDS)
        enabled = top.bool_("enabled", fmt is c.SourceFormat.NATIVE)
        if fmt is c.SourceFormat.NATIVE and not enabled:
            problems.add("enabled", "is false; ipvslb has nothing to do (set it to true)")
        elif fmt is not c.SourceFormat.NATIVE and enabled:
            problems.warn("enabled", "is true, so k0s will run its own keepalived as well; set "
                          "it to false in k0s's config and let ipvslb do the job")
        kind = top.str_("type", "Keepalived")
        if kind not in ("", "Keepalived"):
            problems.add("type", f"{kind!r} is not supported; use Keepalived")
        with problems.at("keepalived"):
            ka = Section(top.raw("keepalived"), problems, KEEPALIVED_FIELDS)
            raw_instances = ka.list_("vrrpInstances")
            if cplb is not None and not raw_instances:
                problems.add("vrrpInstances", "is empty; add at least one VRRP instance with "
                             "virtualIPs and authPass")
            if len(raw_instances) > MAX_VRRP_INSTANCES:
                problems.add("vrrpInstances", f"has {len(raw_instances)} entries; at most "
                             f"{MAX_VRRP_INSTANCES} are allowed")
            used_vrids: dict[int, int] = {}
            seen_vips: dict[c.IPAddress, int] = {}
            for i, raw in enumerate(raw_instances[:MAX_VRRP_INSTANCES]):
                with problems.at(f"vrrpInstances[{i}]"):
                    inst, vips = _vrrp_instance(problems, raw, i, used_vrids)
                for vip in vips:
                    if vip.ip in seen_vips:
                        problems.add(f"vrrpInstances[{i}].virtualIPs", f"{vip.ip} is also a VIP "
                                     f"of vrrpInstances[{seen_vips[vip.ip]}]; a VIP belongs to "
                                     "one instance")
                    seen_vips[vip.ip] = i
                if inst is not None:
                    instances.append(inst)
            seen_vs: set[c.IPAddress] = set()
            for i, raw in enumerate(ka.list_("virtualServers")):
                with problems.at(f"virtualServers[{i}]"):
                    vs = _virtual_server(problems, raw, set(seen_vips), seen_vs)
                if vs is not None:
                    servers.append(vs)
            proxy_port = ka.int_("userSpaceProxyBindPort", c.DEFAULT_PROXY_PORT, 1, 65535) \
                or c.DEFAULT_PROXY_PORT
            if proxy_port == node_settings.api_server_port:
                problems.add("userSpaceProxyBindPort", f"{proxy_port} is the apiserver port; the "
                             "proxy needs a port of its own (default 6444)")
            disable_lb = ka.bool_("disableLoadBalancer", False)
            for key in ("configTemplateVRRP", "configTemplateVS"):
                if ka.has(key):
                    problems.warn(key, "custom templates are not used by ipvslb (it renders "
                                  "keepalived's configuration itself); remove it")
    with_vs = bool(servers) and not disable_lb and node_settings.role is c.Role.CONTROLLER
    check_backends(problems, "endpoints.static", endpoint_settings.static, set(seen_vips),
                   tuple(servers) if with_vs else (), proxy_port, node_settings.api_server_port)
    if external_address:
        problems.warnings.append(
            f"spec.api.externalAddress is {external_address}: make sure that address reaches "
            "the VIP, and disable k0s's endpoint-reconciler as k0s requires")
    if problems.items:
        raise ConfigError(problems.items)
    return c.Config(
        source_format=fmt, node=node_settings, endpoints=endpoint_settings,
        vrrp_instances=tuple(instances), virtual_servers=tuple(servers),
        user_space_proxy_bind_port=proxy_port, disable_load_balancer=disable_lb,
        warnings=tuple(problems.warnings),
    )
