"""A typed model of the part of keepalived.conf that ipvslb writes.

Every value is checked when an object is built: a model that exists can be rendered, and what is
rendered contains exactly the directives the model holds (see :mod:`keepalived_conf.tokens`).
Optional settings default to ``None`` (or ``False`` / empty), meaning "not written; keepalived's
default applies". Sequences may be given as any sequence (lists); they are stored as tuples, so
objects compare and hash by value.
Errors are ``ValueError("ClassName.field: what is wrong and how to fix it")``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from keepalived_conf import tokens as t

LB_ALGOS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "mh", "dh", "fo", "ovf", "sed",
            "nq", "twos")
LB_KINDS = ("NAT", "DR", "TUN")
PROTOCOLS = ("TCP", "UDP", "SCTP")
STATES = ("MASTER", "BACKUP")

#: Upper bound for second settings keepalived stores as microsecond timers in 32 bits
#: (keepalived 2.2.7 -t: "outside range [0, 4294]").
MAX_TIMER = 4294
#: Upper bound we accept for other second settings (31 days).
MAX_SECONDS = 86400 * 31
#: persistence_timeout limit (31 days, same as ipvsadm and keepalived).
MAX_PERSISTENCE = 2678400


def _where(obj: object, name: str) -> str:
    return f"{type(obj).__name__}.{name}"


def _optional(obj: object, name: str, check: Callable[..., Any], *args: Any) -> None:
    value = getattr(obj, name)
    if value is not None:
        check(value, _where(obj, name), *args)


def _type_names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _items(obj: object, name: str, kind: type | tuple[type, ...],
           check: Callable[[object, str], object] | None = None) -> None:
    """Store a sequence field as a tuple and check each element."""
    value = getattr(obj, name)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"{_where(obj, name)}: must be a list, got {value!r}")
    items = tuple(value)
    for index, item in enumerate(items):
        where = f"{_where(obj, name)}[{index}]"
        if check is not None:
            check(item, where)
        elif not isinstance(item, kind):
            raise ValueError(f"{where}: must be a {_type_names(kind)}, "
                             f"got {type(item).__name__}")
    object.__setattr__(obj, name, items)


def _object(obj: object, name: str, kind: type | tuple[type, ...]) -> None:
    value = getattr(obj, name)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{_where(obj, name)}: must be a {_type_names(kind)}, "
                         f"got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# global_defs


@dataclass(frozen=True)
class LvsSyncDaemon:
    """``lvs_sync_daemon <interface> [inst <instance>] [id <sync_id>]``."""

    interface: str
    instance: str | None = None
    sync_id: int | None = None

    def __post_init__(self) -> None:
        t.check_name(self.interface, _where(self, "interface"))
        _optional(self, "instance", t.check_name)
        _optional(self, "sync_id", t.check_int, 0, 255)


@dataclass(frozen=True)
class GlobalDefs:
    """The ``global_defs { ... }`` block (written in this field order)."""

    router_id: str | None = None
    vrrp_version: int | None = None
    vrrp_garp_master_delay: int | None = None
    vrrp_garp_master_repeat: int | None = None
    vrrp_garp_master_refresh: int | None = None
    # a master that sees a higher-priority master sends one advert before it steps down, so the
    # winner (answering with gratuitous ARPs for a lower-priority advert) re-points clients
    vrrp_higher_prio_send_advert: bool = False
    enable_script_security: bool = False
    script_user: str | None = None
    script_group: str | None = None
    lvs_sync_daemon: LvsSyncDaemon | None = None
    max_auto_priority: int | None = None

    def __post_init__(self) -> None:
        _optional(self, "router_id", t.check_name)
        _optional(self, "vrrp_version", t.check_int, 2, 3)
        _optional(self, "vrrp_garp_master_delay", t.check_int, 0, MAX_TIMER)
        _optional(self, "vrrp_garp_master_repeat", t.check_int, 1, 255)
        _optional(self, "vrrp_garp_master_refresh", t.check_int, 0, MAX_TIMER)
        t.check_bool(self.vrrp_higher_prio_send_advert,
                     _where(self, "vrrp_higher_prio_send_advert"))
        t.check_bool(self.enable_script_security, _where(self, "enable_script_security"))
        _optional(self, "script_user", t.check_name)
        _optional(self, "script_group", t.check_name)
        if self.script_group is not None and self.script_user is None:
            raise ValueError("GlobalDefs.script_group: needs script_user")
        _object(self, "lvs_sync_daemon", LvsSyncDaemon)
        _optional(self, "max_auto_priority", t.check_int, -1, 99)


# ---------------------------------------------------------------------------------------------
# vrrp_script


@dataclass(frozen=True)
class VrrpScript:
    """``vrrp_script <name> { script "..." ... }``: a health check that moves VRRP priority."""

    name: str
    script: str
    interval: int | None = None
    timeout: int | None = None
    rise: int | None = None
    fall: int | None = None
    weight: int | None = None
    user: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        t.check_name(self.name, _where(self, "name"))
        t.check_script(self.script, _where(self, "script"))
        _optional(self, "interval", t.check_int, 1, 4294)
        _optional(self, "timeout", t.check_int, 1, 4294)
        _optional(self, "rise", t.check_int, 1, 65535)
        _optional(self, "fall", t.check_int, 1, 65535)
        _optional(self, "weight", t.check_int, -253, 253)
        _optional(self, "user", t.check_name)
        _optional(self, "group", t.check_name)
        if self.group is not None and self.user is None:
            raise ValueError("VrrpScript.group: needs user")


@dataclass(frozen=True)
class TrackFile:
    """``track_file <name> { file "<path>" weight <w> init_file <v> }``.

    keepalived reads a number from the file whenever it changes. With weight 0, a non-zero
    value puts the instances that track it in FAULT (they give up their VIPs).
    """

    name: str
    file: str
    weight: int | None = None
    init_file: int | None = None

    def __post_init__(self) -> None:
        t.check_name(self.name, _where(self, "name"))
        t.check_path(self.file, _where(self, "file"))
        _optional(self, "weight", t.check_int, -254, 254)
        _optional(self, "init_file", t.check_int, -254, 254)


# ---------------------------------------------------------------------------------------------
# vrrp_instance


@dataclass(frozen=True)
class Authentication:
    """``authentication { auth_type PASS  auth_pass <password> }`` (at most 8 characters)."""

    auth_pass: str
    auth_type: Literal["PASS"] = "PASS"

    def __post_init__(self) -> None:
        t.check_choice(self.auth_type, _where(self, "auth_type"), ("PASS",))
        t.check_password(self.auth_pass, _where(self, "auth_pass"))


@dataclass(frozen=True)
class VirtualIPAddress:
    """One ``virtual_ipaddress`` line: ``<address>[/<prefix>] [dev <iface>] [label <label>]``."""

    address: str
    dev: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        t.check_cidr(self.address, _where(self, "address"))
        _optional(self, "dev", t.check_name)
        _optional(self, "label", t.check_name)


@dataclass(frozen=True)
class TrackScript:
    """One ``track_script`` line: a ``vrrp_script`` name with an optional weight override."""

    name: str
    weight: int | None = None

    def __post_init__(self) -> None:
        t.check_name(self.name, _where(self, "name"))
        _optional(self, "weight", t.check_int, -253, 253)


@dataclass(frozen=True)
class TrackFileRef:
    """One ``track_file`` line in an instance: a ``track_file`` name, optional weight."""

    name: str
    weight: int | None = None

    def __post_init__(self) -> None:
        t.check_name(self.name, _where(self, "name"))
        _optional(self, "weight", t.check_int, -254, 254)


@dataclass(frozen=True)
class VrrpInstance:
    """``vrrp_instance <name> { ... }`` (written in this field order)."""

    name: str
    interface: str
    virtual_router_id: int
    priority: int
    state: Literal["MASTER", "BACKUP"] | None = "BACKUP"
    version: int | None = None
    advert_int: float | None = None
    nopreempt: bool = False
    garp_master_delay: int | None = None
    garp_master_refresh: int | None = None
    authentication: Authentication | None = None
    unicast_src_ip: str | None = None
    unicast_peers: Sequence[str] = ()
    virtual_ipaddresses: Sequence[VirtualIPAddress] = ()
    track_scripts: Sequence[TrackScript] = ()
    track_files: Sequence[TrackFileRef] = ()
    notify_master: str | None = None
    notify_backup: str | None = None
    notify_fault: str | None = None
    notify_stop: str | None = None
    notify: str | None = None

    NOTIFY_FIELDS: ClassVar[tuple[str, ...]] = (
        "notify_master", "notify_backup", "notify_fault", "notify_stop", "notify")

    def __post_init__(self) -> None:
        t.check_name(self.name, _where(self, "name"))
        t.check_name(self.interface, _where(self, "interface"))
        t.check_int(self.virtual_router_id, _where(self, "virtual_router_id"), 1, 255)
        t.check_int(self.priority, _where(self, "priority"), 1, 255)
        _optional(self, "state", t.check_choice, STATES)
        _optional(self, "version", t.check_int, 2, 3)
        # VRRPv3 adverts count centiseconds (0.01-40.95 s); VRRPv2 whole seconds (1-255).
        _optional(self, "advert_int", t.check_seconds, 0.01, 255, 2)
        t.check_bool(self.nopreempt, _where(self, "nopreempt"))
        _optional(self, "garp_master_delay", t.check_int, 0, MAX_TIMER)
        _optional(self, "garp_master_refresh", t.check_int, 0, MAX_TIMER)
        _object(self, "authentication", Authentication)
        _optional(self, "unicast_src_ip", t.check_ip)
        _items(self, "unicast_peers", str, t.check_ip)
        _items(self, "virtual_ipaddresses", VirtualIPAddress)
        _items(self, "track_scripts", TrackScript)
        _items(self, "track_files", TrackFileRef)
        for name in self.NOTIFY_FIELDS:
            _optional(self, name, t.check_script)
        if not self.virtual_ipaddresses:
            raise ValueError("VrrpInstance.virtual_ipaddresses: needs at least one address "
                             "(keepalived refuses an instance without one)")
        self._check_family()
        if self.version is not None or self.family == 6:
            self.check_version(None)

    @property
    def family(self) -> int:
        """4 or 6: the address family of the instance (of its first virtual IP address)."""
        return ipaddress.ip_address(self.virtual_ipaddresses[0].address.partition("/")[0]).version

    def _check_family(self) -> None:
        family = self.family
        fields = [(f"virtual_ipaddresses[{i}].address", v.address.partition("/")[0])
                  for i, v in enumerate(self.virtual_ipaddresses)]
        if self.unicast_src_ip is not None:
            fields.append(("unicast_src_ip", self.unicast_src_ip))
        fields += [(f"unicast_peers[{i}]", p) for i, p in enumerate(self.unicast_peers)]
        for name, address in fields:
            if ipaddress.ip_address(address).version != family:
                raise ValueError(f"VrrpInstance.{name}: {address} is not IPv{family} like the "
                                 "first virtual IP address (one address family per instance)")

    def vrrp_version(self, global_version: int | None) -> int:
        """The VRRP version keepalived runs: ours, else 3 for IPv6, else global_defs', else 2."""
        if self.version is not None:
            return self.version
        if self.family == 6:
            return 3
        return global_version or 2

    def check_version(self, global_version: int | None) -> None:
        """Settings that depend on the VRRP version (keepalived -t fails on each of these)."""
        version = self.vrrp_version(global_version)
        if version == 3 and self.authentication is not None:
            raise ValueError("VrrpInstance.authentication: VRRP version 3 has no authentication; "
                             "remove it or use version 2")
        advert = self.advert_int
        if advert is not None and version == 2 and advert != int(advert):
            raise ValueError(f"VrrpInstance.advert_int: VRRP version 2 needs whole seconds, got "
                             f"{advert}; use version 3 for fractions")
        if advert is not None and version == 3 and advert > 40.95:
            raise ValueError(f"VrrpInstance.advert_int: VRRP version 3 allows at most 40.95 "
                             f"seconds, got {advert}")


# ---------------------------------------------------------------------------------------------
# virtual_server


@dataclass(frozen=True, kw_only=True)
class _CheckerBase:
    """Connection options every checker shares."""

    connect_port: int | None = None
    connect_timeout: float | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    warmup: float | None = None

    def _check_common(self) -> None:
        _optional(self, "connect_port", t.check_int, 1, 65535)
        _optional(self, "connect_timeout", t.check_seconds, 0.000001, MAX_TIMER)
        _optional(self, "retry", t.check_int, 0, 65535)
        _optional(self, "delay_before_retry", t.check_seconds, 0, MAX_SECONDS)
        _optional(self, "warmup", t.check_seconds, 0, MAX_SECONDS)


@dataclass(frozen=True, kw_only=True)
class TcpCheck(_CheckerBase):
    """``TCP_CHECK { ... }``: the real server is up while a TCP connect succeeds."""

    KEYWORD: ClassVar[str] = "TCP_CHECK"

    def __post_init__(self) -> None:
        self._check_common()


@dataclass(frozen=True)
class HttpUrl:
    """``url { path <path> [status_code <code>] }``."""

    path: str
    status_code: int | None = None

    def __post_init__(self) -> None:
        t.check_url_path(self.path, _where(self, "path"))
        _optional(self, "status_code", t.check_int, 100, 599)


@dataclass(frozen=True, kw_only=True)
class _HttpCheckBase(_CheckerBase):
    urls: Sequence[HttpUrl] = ()

    def __post_init__(self) -> None:
        self._check_common()
        _items(self, "urls", HttpUrl)
        if not self.urls:
            raise ValueError(f"{_where(self, 'urls')}: needs at least one url")


@dataclass(frozen=True, kw_only=True)
class HttpGet(_HttpCheckBase):
    """``HTTP_GET { url { ... } ... }``."""

    KEYWORD: ClassVar[str] = "HTTP_GET"


@dataclass(frozen=True, kw_only=True)
class SslGet(_HttpCheckBase):
    """``SSL_GET { url { ... } ... }`` (HTTPS; keepalived builds its own TLS context)."""

    KEYWORD: ClassVar[str] = "SSL_GET"


Checker = TcpCheck | HttpGet | SslGet
CHECKERS: tuple[type[TcpCheck], type[HttpGet], type[SslGet]] = (TcpCheck, HttpGet, SslGet)


@dataclass(frozen=True)
class RealServer:
    """``real_server <ip> <port> { ... }``."""

    ip: str
    port: int
    weight: int | None = None
    inhibit_on_failure: bool = False
    checker: Checker | None = None

    def __post_init__(self) -> None:
        t.check_ip(self.ip, _where(self, "ip"))
        t.check_int(self.port, _where(self, "port"), 1, 65535)
        _optional(self, "weight", t.check_int, 0, 65535)
        t.check_bool(self.inhibit_on_failure, _where(self, "inhibit_on_failure"))
        _object(self, "checker", CHECKERS)


@dataclass(frozen=True)
class VirtualServer:
    """``virtual_server <ip> <port> { ... }`` (written in this field order)."""

    ip: str
    port: int
    delay_loop: float | None = None
    lb_algo: str = "rr"
    lb_kind: str = "DR"
    persistence_timeout: int | None = None
    protocol: str = "TCP"
    quorum: int | None = None
    hysteresis: int | None = None
    alpha: bool = False
    real_servers: Sequence[RealServer] = ()

    def __post_init__(self) -> None:
        t.check_ip(self.ip, _where(self, "ip"))
        t.check_int(self.port, _where(self, "port"), 1, 65535)
        _optional(self, "delay_loop", t.check_seconds, 0.000001, MAX_SECONDS)
        # keepalived -t warns (exit 5) when scheduler, forwarding method or protocol is unset.
        t.check_choice(self.lb_algo, _where(self, "lb_algo"), LB_ALGOS)
        t.check_choice(self.lb_kind, _where(self, "lb_kind"), LB_KINDS)
        _optional(self, "persistence_timeout", t.check_int, 1, MAX_PERSISTENCE)
        t.check_choice(self.protocol, _where(self, "protocol"), PROTOCOLS)
        _optional(self, "quorum", t.check_int, 1, 2**31 - 1)
        _optional(self, "hysteresis", t.check_int, 0, 2**31 - 1)
        t.check_bool(self.alpha, _where(self, "alpha"))
        _items(self, "real_servers", RealServer)
        if not self.real_servers:
            raise ValueError("VirtualServer.real_servers: needs at least one real server "
                             "(keepalived ignores a virtual server without one)")
        for index, real in enumerate(self.real_servers):
            if self.lb_kind in ("DR", "TUN") and real.port != self.port:
                raise ValueError(
                    f"VirtualServer.real_servers[{index}].port: {real.port} differs from the "
                    f"virtual server's {self.port}; {self.lb_kind} forwarding keeps the port")


# ---------------------------------------------------------------------------------------------
# top level


@dataclass(frozen=True)
class Include:
    """``include <path>``: keepalived reads that file (or glob) at this point."""

    path: str

    def __post_init__(self) -> None:
        t.check_path(self.path, _where(self, "path"))


Item = GlobalDefs | VrrpScript | TrackFile | VrrpInstance | VirtualServer | Include
ITEM_TYPES = (GlobalDefs, VrrpScript, TrackFile, VrrpInstance, VirtualServer, Include)


@dataclass(frozen=True)
class Config:
    """A whole keepalived.conf: top-level blocks and includes, written in this order."""

    items: Sequence[Item] = ()

    def __post_init__(self) -> None:
        _items(self, "items", ITEM_TYPES)
        globals_ = [item for item in self.items if isinstance(item, GlobalDefs)]
        if len(globals_) > 1:
            raise ValueError("Config.items: at most one GlobalDefs block")
        global_version = globals_[0].vrrp_version if globals_ else None
        for item in self.items:
            if isinstance(item, VrrpInstance):
                item.check_version(global_version)
