"""Read keepalived.conf text written by :func:`keepalived_conf.render` back into the model.

``parse(render(config)) == config`` for every model. The parser accepts the renderer's layout
(one directive per line, ``{`` at the end of a block's first line, ``}`` on its own line, blank
lines and whole-line ``#``/``!`` comments) and nothing else: any other construct raises
:class:`ParseError` (a ValueError) whose message starts with ``line N:``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from keepalived_conf.model import (
    Authentication,
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

T = TypeVar("T")


class ParseError(ValueError):
    """Text the parser does not understand; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


class Token(NamedTuple):
    text: str
    quoted: bool


@dataclass
class Node:
    line: int
    words: list[Token]
    children: list[Node] | None  # None: a plain directive; a list: a { } block

    @property
    def keyword(self) -> str:
        return self.words[0].text

    @property
    def args(self) -> list[Token]:
        return self.words[1:]


_BARE_FORBIDDEN = set("\"'\\#!$")


def _tokenize(text: str, line: int) -> list[Token]:
    if not re.fullmatch(r"[ -~\t]*", text):
        raise ParseError(line, "contains a character that is not printable ASCII")
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        if text[i] in " \t":
            i += 1
            continue
        if text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise ParseError(line, "quoted string is not closed")
            if end + 1 < len(text) and text[end + 1] not in " \t":
                raise ParseError(line, "text directly after a closing quote")
            tokens.append(Token(text[i + 1 : end], True))
            i = end + 1
            continue
        j = i
        while j < len(text) and text[j] not in " \t":
            j += 1
        bare = text[i:j]
        if bare[0] in "#!":
            raise ParseError(line, "comments after a directive are not supported")
        if _BARE_FORBIDDEN.intersection(bare):
            raise ParseError(line, f"unsupported character in {bare!r}")
        if bare not in ("{", "}") and ("{" in bare or "}" in bare):
            raise ParseError(line, f"braces must be separate words: {bare!r}")
        tokens.append(Token(bare, False))
        i = j
    return tokens


def parse_tree(text: str) -> list[Node]:
    """Split text into a tree of directives and blocks (no meaning attached yet)."""
    root: list[Node] = []
    stack: list[tuple[Node | None, list[Node]]] = [(None, root)]
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip(" \t\r")
        if not stripped or stripped[0] in "#!":
            continue
        words = _tokenize(stripped, number)
        bare = [w.text for w in words if not w.quoted]
        if [w.text for w in words] == ["}"] and not words[0].quoted:
            if len(stack) == 1:
                raise ParseError(number, "'}' without an open block")
            stack.pop()
            continue
        if words[-1] == Token("{", False):
            if len(words) == 1 or "{" in bare[:-1] or "}" in bare:
                raise ParseError(number, "a block must start with a keyword and end with '{'")
            node = Node(number, words[:-1], [])
            stack[-1][1].append(node)
            assert node.children is not None
            stack.append((node, node.children))
            continue
        if "{" in bare or "}" in bare:
            raise ParseError(number, "'{' must end a line and '}' must stand alone")
        stack[-1][1].append(Node(number, words, None))
    if len(stack) > 1:
        opened = stack[-1][0]
        assert opened is not None
        raise ParseError(opened.line, f"block '{opened.keyword}' is never closed")
    return root


# ---------------------------------------------------------------------------------------------
# helpers


def _words(node: Node, low: int, high: int | None = None) -> list[str]:
    count = len(node.args)
    high = low if high is None else high
    if not low <= count <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        raise ParseError(node.line, f"'{node.keyword}' takes {wanted} value(s), got {count}")
    return [a.text for a in node.args]


def _one(node: Node) -> str:
    return _words(node, 1)[0]


def _int(node: Node, text: str | None = None) -> int:
    value = _one(node) if text is None else text
    if not re.fullmatch(r"-?[0-9]{1,18}", value):
        raise ParseError(node.line, f"'{node.keyword}' needs an integer, got {value!r}")
    return int(value)


def _number(node: Node) -> int | float:
    value = _one(node)
    if not re.fullmatch(r"[0-9]{1,18}(\.[0-9]{1,18})?", value):
        raise ParseError(node.line, f"'{node.keyword}' needs a number, got {value!r}")
    return float(value) if "." in value else int(value)


def _flag(node: Node) -> bool:
    _words(node, 0)
    return True


def _plain(node: Node) -> None:
    if node.children is not None:
        raise ParseError(node.line, f"'{node.keyword}' does not take a {{ }} block")


def _block(node: Node) -> list[Node]:
    if node.children is None:
        raise ParseError(node.line, f"'{node.keyword}' needs a {{ }} block")
    return node.children


class _Values(dict[str, Any]):
    """Field values read from a block, remembering the line each came from."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, int] = {}


def _absent(f: dataclasses.Field[Any]) -> Any:
    if f.default is False:
        return False
    if f.default == ():
        return ()
    return None


def _build(cls: Callable[..., T], values: dict[str, Any], node: Node, what: str) -> T:
    """Construct a model object; missing optional fields are absent (None/False/())."""
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values or not f.init:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParseError(node.line, f"{what}: missing '{f.name}'")
        values[f.name] = _absent(f)
    try:
        return cls(**values)
    except ValueError as err:
        # Point at the directive holding the bad value when we know it.
        field = str(err).partition(":")[0].partition(".")[2].partition("[")[0]
        line = values.lines.get(field, node.line) if isinstance(values, _Values) else node.line
        raise ParseError(line, str(err)) from None


Handler = Callable[[Node], Any]


def _fields(nodes: list[Node], what: str, handlers: dict[str, tuple[str, Handler]],
            blocks: frozenset[str] = frozenset()) -> _Values:
    """Map each directive to a model field via ``handlers``: keyword -> (field, reader)."""
    values = _Values()
    for node in nodes:
        if node.keyword not in handlers or node.words[0].quoted:
            raise ParseError(node.line, f"unknown keyword '{node.keyword}' in {what}")
        if node.keyword not in blocks:
            _plain(node)
        name, reader = handlers[node.keyword]
        if name in values:
            raise ParseError(node.line, f"'{node.keyword}' given twice in {what}")
        values[name] = reader(node)
        values.lines[name] = node.line
    return values


# ---------------------------------------------------------------------------------------------
# blocks


def _user(node: Node) -> tuple[str, str | None]:
    names = _words(node, 1, 2)
    return names[0], (names[1] if len(names) == 2 else None)


def _lvs_sync_daemon(node: Node) -> LvsSyncDaemon:
    words = _words(node, 1, 5)
    values: dict[str, Any] = {"interface": words[0]}
    rest = words[1:]
    if len(rest) % 2:
        raise ParseError(node.line, "lvs_sync_daemon: expected '<iface> [inst <name>] [id <n>]'")
    for key, value in zip(rest[::2], rest[1::2], strict=True):
        field = {"inst": "instance", "id": "sync_id"}.get(key)
        if field is None or field in values:
            raise ParseError(node.line, f"lvs_sync_daemon: unexpected {key!r}")
        values[field] = _int(node, value) if field == "sync_id" else value
    return _build(LvsSyncDaemon, values, node, "lvs_sync_daemon")


def _global_defs(node: Node) -> GlobalDefs:
    _words(node, 0)
    values = _fields(_block(node), "global_defs", {
        "router_id": ("router_id", _one),
        "vrrp_version": ("vrrp_version", _int),
        "vrrp_garp_master_delay": ("vrrp_garp_master_delay", _int),
        "vrrp_garp_master_repeat": ("vrrp_garp_master_repeat", _int),
        "vrrp_garp_master_refresh": ("vrrp_garp_master_refresh", _int),
        "vrrp_higher_prio_send_advert": ("vrrp_higher_prio_send_advert", _flag),
        "enable_script_security": ("enable_script_security", _flag),
        "script_user": ("script_user", _user),
        "lvs_sync_daemon": ("lvs_sync_daemon", _lvs_sync_daemon),
        "max_auto_priority": ("max_auto_priority", _int),
    })
    if "script_user" in values:
        values["script_user"], values["script_group"] = values["script_user"]
    return _build(GlobalDefs, values, node, "global_defs")


def _vrrp_script(node: Node) -> VrrpScript:
    values = _fields(_block(node), "vrrp_script", {
        "script": ("script", _one),
        "interval": ("interval", _int),
        "timeout": ("timeout", _int),
        "rise": ("rise", _int),
        "fall": ("fall", _int),
        "weight": ("weight", _int),
        "user": ("user", _user),
    })
    values["name"] = _one(node)
    if "user" in values:
        values["user"], values["group"] = values["user"]
    return _build(VrrpScript, values, node, "vrrp_script")


def _track_file(node: Node) -> TrackFile:
    values = _fields(_block(node), "track_file", {
        "file": ("file", _one),
        "weight": ("weight", _int),
        "init_file": ("init_file", _int),
    })
    values["name"] = _one(node)
    return _build(TrackFile, values, node, "track_file")


def _entries(node: Node) -> list[Node]:
    entries = _block(node)
    for entry in entries:
        _plain(entry)
        if any(w.quoted for w in entry.words):
            raise ParseError(entry.line, f"quoted text is not expected in {node.keyword}")
    return entries


def _options(entry: Node, allowed: dict[str, str], what: str) -> dict[str, str]:
    """``<value> [key value]...`` -> {field: value} (first word under the key '')."""
    words = [w.text for w in entry.words]
    values = {"": words[0]}
    rest = words[1:]
    if len(rest) % 2:
        raise ParseError(entry.line, f"{what}: options come in pairs, got {' '.join(rest)!r}")
    for key, value in zip(rest[::2], rest[1::2], strict=True):
        field = allowed.get(key)
        if field is None or field in values:
            raise ParseError(entry.line, f"{what}: unexpected {key!r}")
        values[field] = value
    return values


def _unicast_peers(node: Node) -> tuple[str, ...]:
    peers = []
    for entry in _entries(node):
        _options(entry, {}, "unicast_peer")
        peers.append(entry.keyword)
    return tuple(peers)


def _virtual_ipaddresses(node: Node) -> tuple[VirtualIPAddress, ...]:
    vips = []
    for entry in _entries(node):
        values = _options(entry, {"dev": "dev", "label": "label"}, "virtual_ipaddress")
        values["address"] = values.pop("")
        vips.append(_build(VirtualIPAddress, values, entry, "virtual_ipaddress"))
    return tuple(vips)


def _track_scripts(node: Node) -> tuple[TrackScript, ...]:
    tracks = []
    for entry in _entries(node):
        raw = _options(entry, {"weight": "weight"}, "track_script")
        values: dict[str, Any] = {"name": raw.pop("")}
        if "weight" in raw:
            values["weight"] = _int(entry, raw["weight"])
        tracks.append(_build(TrackScript, values, entry, "track_script"))
    return tuple(tracks)


def _track_file_refs(node: Node) -> tuple[TrackFileRef, ...]:
    refs = []
    for entry in _entries(node):
        raw = _options(entry, {"weight": "weight"}, "track_file")
        values: dict[str, Any] = {"name": raw.pop("")}
        if "weight" in raw:
            values["weight"] = _int(entry, raw["weight"])
        refs.append(_build(TrackFileRef, values, entry, "track_file"))
    return tuple(refs)


def _authentication(node: Node) -> Authentication:
    _words(node, 0)
    values = _fields(_block(node), "authentication", {
        "auth_type": ("auth_type", _one),
        "auth_pass": ("auth_pass", _one),
    })
    return _build(Authentication, values, node, "authentication")


def _vrrp_instance(node: Node) -> VrrpInstance:
    handlers: dict[str, tuple[str, Handler]] = {
        "state": ("state", _one),
        "interface": ("interface", _one),
        "virtual_router_id": ("virtual_router_id", _int),
        "priority": ("priority", _int),
        "version": ("version", _int),
        "advert_int": ("advert_int", _number),
        "nopreempt": ("nopreempt", _flag),
        "garp_master_delay": ("garp_master_delay", _int),
        "garp_master_refresh": ("garp_master_refresh", _int),
        "authentication": ("authentication", _authentication),
        "unicast_src_ip": ("unicast_src_ip", _one),
        "unicast_peer": ("unicast_peers", _unicast_peers),
        "virtual_ipaddress": ("virtual_ipaddresses", _virtual_ipaddresses),
        "track_script": ("track_scripts", _track_scripts),
        "track_file": ("track_files", _track_file_refs),
    }
    for name in VrrpInstance.NOTIFY_FIELDS:
        handlers[name] = (name, _one)
    blocks = frozenset({"authentication", "unicast_peer", "virtual_ipaddress", "track_script",
                        "track_file"})
    values = _fields(_block(node), "vrrp_instance", handlers, blocks)
    values["name"] = _one(node)
    return _build(VrrpInstance, values, node, "vrrp_instance")


def _url(node: Node) -> HttpUrl:
    _words(node, 0)
    values = _fields(_block(node), "url", {
        "path": ("path", _one),
        "status_code": ("status_code", _int),
    })
    return _build(HttpUrl, values, node, "url")


def _checker(node: Node) -> TcpCheck | HttpGet | SslGet:
    _words(node, 0)
    kind = {"TCP_CHECK": TcpCheck, "HTTP_GET": HttpGet, "SSL_GET": SslGet}[node.keyword]
    handlers: dict[str, tuple[str, Handler]] = {
        "connect_port": ("connect_port", _int),
        "connect_timeout": ("connect_timeout", _number),
        "retry": ("retry", _int),
        "delay_before_retry": ("delay_before_retry", _number),
        "warmup": ("warmup", _number),
    }
    urls: list[HttpUrl] = []
    nodes = _block(node)
    if kind is not TcpCheck:
        urls = [_url(n) for n in nodes if n.keyword == "url" and not n.words[0].quoted]
        nodes = [n for n in nodes if n.keyword != "url" or n.words[0].quoted]
    values = _fields(nodes, node.keyword, handlers)
    if kind is not TcpCheck:
        values["urls"] = tuple(urls)
    return _build(kind, values, node, node.keyword)


def _real_server(node: Node) -> RealServer:
    ip, port = _words(node, 2)
    handlers: dict[str, tuple[str, Handler]] = {
        "weight": ("weight", _int),
        "inhibit_on_failure": ("inhibit_on_failure", _flag),
    }
    for keyword in ("TCP_CHECK", "HTTP_GET", "SSL_GET"):
        handlers[keyword] = ("checker", _checker)
    blocks = frozenset({"TCP_CHECK", "HTTP_GET", "SSL_GET"})
    values = _fields(_block(node), "real_server", handlers, blocks)
    values.update(ip=ip, port=_int(node, port))
    return _build(RealServer, values, node, "real_server")


def _virtual_server(node: Node) -> VirtualServer:
    ip, port = _words(node, 2)
    handlers: dict[str, tuple[str, Handler]] = {
        "delay_loop": ("delay_loop", _number),
        "lb_algo": ("lb_algo", _one),
        "lb_kind": ("lb_kind", _one),
        "persistence_timeout": ("persistence_timeout", _int),
        "protocol": ("protocol", _one),
        "quorum": ("quorum", _int),
        "hysteresis": ("hysteresis", _int),
        "alpha": ("alpha", _flag),
    }
    children = _block(node)
    reals = [_real_server(n) for n in children if n.keyword == "real_server"]
    values = _fields([n for n in children if n.keyword != "real_server"], "virtual_server",
                     handlers)
    values.update(ip=ip, port=_int(node, port), real_servers=tuple(reals))
    return _build(VirtualServer, values, node, "virtual_server")


def _include(node: Node) -> Include:
    _plain(node)
    return _build(Include, {"path": _one(node)}, node, "include")


_TOP: dict[str, Callable[[Node], Item]] = {
    "global_defs": _global_defs,
    "vrrp_script": _vrrp_script,
    "track_file": _track_file,
    "vrrp_instance": _vrrp_instance,
    "virtual_server": _virtual_server,
    "include": _include,
}


def parse(text: str) -> Config:
    """Parse keepalived.conf text as written by :func:`render`; raises :class:`ParseError`."""
    items: list[Item] = []
    for node in parse_tree(text):
        reader = _TOP.get(node.keyword)
        if reader is None or node.words[0].quoted:
            raise ParseError(node.line, f"unknown top-level keyword '{node.keyword}'")
        item = reader(node)
        if isinstance(item, GlobalDefs) and any(isinstance(i, GlobalDefs) for i in items):
            raise ParseError(node.line, "global_defs given twice")
        items.append(item)
    return Config(tuple(items))
