"""keepalived.conf as typed data: a model, a safe deterministic renderer and a parser for it.

>>> from keepalived_conf import Config, VrrpInstance, VirtualIPAddress, render, parse
>>> cfg = Config((VrrpInstance("VI_1", "eth0", 51, 100,
...                            virtual_ipaddresses=(VirtualIPAddress("10.0.0.10/24"),)),))
>>> parse(render(cfg)) == cfg
True

Files are written with :func:`ipvslb.files.write_atomic` (mode 0600: passwords are inside).
"""

from keepalived_conf.model import (
    LB_ALGOS,
    LB_KINDS,
    PROTOCOLS,
    Authentication,
    Checker,
    Config,
    GlobalDefs,
    HttpGet,
    HttpUrl,
    Include,
    Item,
    LvsSyncDaemon,
    RealServer,
    SslGet,
    TcpCheck,
    TrackFile,
    TrackFileRef,
    TrackScript,
    VirtualIPAddress,
    VirtualServer,
    VrrpInstance,
    VrrpScript,
)
from keepalived_conf.parse import ParseError, parse
from keepalived_conf.render import quote, render, word

__all__ = [
    "LB_ALGOS",
    "LB_KINDS",
    "PROTOCOLS",
    "Authentication",
    "Checker",
    "Config",
    "GlobalDefs",
    "HttpGet",
    "HttpUrl",
    "Include",
    "Item",
    "LvsSyncDaemon",
    "ParseError",
    "RealServer",
    "SslGet",
    "TcpCheck",
    "TrackFile",
    "TrackFileRef",
    "TrackScript",
    "VirtualIPAddress",
    "VirtualServer",
    "VrrpInstance",
    "VrrpScript",
    "parse",
    "quote",
    "render",
    "word",
]
