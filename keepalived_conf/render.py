"""Render a :class:`~keepalived_conf.model.Config` to keepalived.conf text.

Deterministic: the same model always gives the same text (4-space indentation, one directive per
line, top-level items separated by one blank line, a final newline, numbers in their shortest
plain form). The model checks its values when built; every word is checked again here, so no
value can open a block, start a comment, quote, escape, substitute, include or split a line.
"""

from __future__ import annotations

from keepalived_conf import tokens as t
from keepalived_conf.model import (
    Config,
    GlobalDefs,
    HttpGet,
    Include,
    RealServer,
    SslGet,
    TcpCheck,
    TrackFile,
    VirtualServer,
    VrrpInstance,
    VrrpScript,
)

INDENT = "    "
_UNSAFE = frozenset("\"'\\{}#!$")


def word(value: object) -> str:
    """A bare word: printable ASCII without spaces or characters keepalived treats specially."""
    text = value if isinstance(value, str) else None
    if isinstance(value, bool):
        text = None
    elif isinstance(value, int | float):
        text = t.format_number(value)
    if (
        not text
        or len(text) > t.MAX_TOKEN
        or not t.WORD_RE.fullmatch(text)
        or _UNSAFE.intersection(text)
    ):
        raise ValueError(f"unsafe keepalived word {value!r}")
    return text


def quote(value: str) -> str:
    """A script command line in double quotes (keepalived splits it into arguments at spaces)."""
    return '"' + t.check_script(value, "script") + '"'


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def line(self, *words: str) -> None:
        first = words[0]
        if first[0] in "@~$" or (first in t.INCLUDE_WORDS and self.depth > 0):
            raise ValueError(f"unsafe keepalived line start {first!r}")
        text = INDENT * self.depth + " ".join(words)
        if len(text.encode()) > t.MAX_LINE:
            raise ValueError(f"keepalived line longer than {t.MAX_LINE} bytes: {text[:60]}...")
        self.lines.append(text)

    def open(self, *words: str) -> None:
        self.line(*words, "{")
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        self.lines.append(INDENT * self.depth + "}")

    def opt(self, keyword: str, value: object) -> None:
        if value is not None:
            self.line(keyword, word(value))

    def flag(self, keyword: str, value: bool) -> None:
        if value:
            self.line(keyword)

    def script(self, keyword: str, value: str | None) -> None:
        if value is not None:
            self.line(keyword, quote(value))


def _global_defs(out: _Writer, g: GlobalDefs) -> None:
    out.open("global_defs")
    out.opt("router_id", g.router_id)
    out.opt("vrrp_version", g.vrrp_version)
    out.opt("vrrp_garp_master_delay", g.vrrp_garp_master_delay)
    out.opt("vrrp_garp_master_repeat", g.vrrp_garp_master_repeat)
    out.opt("vrrp_garp_master_refresh", g.vrrp_garp_master_refresh)
    out.flag("vrrp_higher_prio_send_advert", g.vrrp_higher_prio_send_advert)
    out.flag("enable_script_security", g.enable_script_security)
    if g.script_user is not None:
        extra = [word(g.script_group)] if g.script_group is not None else []
        out.line("script_user", word(g.script_user), *extra)
    if g.lvs_sync_daemon is not None:
        sync = g.lvs_sync_daemon
        words = [word(sync.interface)]
        if sync.instance is not None:
            words += ["inst", word(sync.instance)]
        if sync.sync_id is not None:
            words += ["id", word(sync.sync_id)]
        out.line("lvs_sync_daemon", *words)
    out.opt("max_auto_priority", g.max_auto_priority)
    out.close()


def _vrrp_script(out: _Writer, s: VrrpScript) -> None:
    out.open("vrrp_script", word(s.name))
    out.script("script", s.script)
    out.opt("interval", s.interval)
    out.opt("timeout", s.timeout)
    out.opt("rise", s.rise)
    out.opt("fall", s.fall)
    out.opt("weight", s.weight)
    if s.user is not None:
        extra = [word(s.group)] if s.group is not None else []
        out.line("user", word(s.user), *extra)
    out.close()


def _track_file(out: _Writer, f: TrackFile) -> None:
    out.open("track_file", word(f.name))
    out.script("file", f.file)
    out.opt("weight", f.weight)
    out.opt("init_file", f.init_file)
    out.close()


def _vrrp_instance(out: _Writer, v: VrrpInstance) -> None:
    out.open("vrrp_instance", word(v.name))
    out.opt("state", v.state)
    out.opt("interface", v.interface)
    out.opt("virtual_router_id", v.virtual_router_id)
    out.opt("priority", v.priority)
    out.opt("version", v.version)
    out.opt("advert_int", v.advert_int)
    out.flag("nopreempt", v.nopreempt)
    out.opt("garp_master_delay", v.garp_master_delay)
    out.opt("garp_master_refresh", v.garp_master_refresh)
    if v.authentication is not None:
        out.open("authentication")
        out.opt("auth_type", v.authentication.auth_type)
        out.opt("auth_pass", v.authentication.auth_pass)
        out.close()
    out.opt("unicast_src_ip", v.unicast_src_ip)
    if v.unicast_peers:
        out.open("unicast_peer")
        for peer in v.unicast_peers:
            out.line(word(peer))
        out.close()
    if v.virtual_ipaddresses:
        out.open("virtual_ipaddress")
        for vip in v.virtual_ipaddresses:
            words = [word(vip.address)]
            if vip.dev is not None:
                words += ["dev", word(vip.dev)]
            if vip.label is not None:
                words += ["label", word(vip.label)]
            out.line(*words)
        out.close()
    if v.track_scripts:
        out.open("track_script")
        for track in v.track_scripts:
            extra = ["weight", word(track.weight)] if track.weight is not None else []
            out.line(word(track.name), *extra)
        out.close()
    if v.track_files:
        out.open("track_file")
        for ref in v.track_files:
            extra = ["weight", word(ref.weight)] if ref.weight is not None else []
            out.line(word(ref.name), *extra)
        out.close()
    for name in VrrpInstance.NOTIFY_FIELDS:
        out.script(name, getattr(v, name))
    out.close()


def _checker(out: _Writer, c: TcpCheck | HttpGet | SslGet) -> None:
    out.open(c.KEYWORD)
    if isinstance(c, HttpGet | SslGet):
        for url in c.urls:
            out.open("url")
            out.opt("path", url.path)
            out.opt("status_code", url.status_code)
            out.close()
    out.opt("connect_port", c.connect_port)
    out.opt("connect_timeout", c.connect_timeout)
    out.opt("retry", c.retry)
    out.opt("delay_before_retry", c.delay_before_retry)
    out.opt("warmup", c.warmup)
    out.close()


def _real_server(out: _Writer, r: RealServer) -> None:
    out.open("real_server", word(r.ip), word(r.port))
    out.opt("weight", r.weight)
    out.flag("inhibit_on_failure", r.inhibit_on_failure)
    if r.checker is not None:
        _checker(out, r.checker)
    out.close()


def _virtual_server(out: _Writer, vs: VirtualServer) -> None:
    out.open("virtual_server", word(vs.ip), word(vs.port))
    out.opt("delay_loop", vs.delay_loop)
    out.opt("lb_algo", vs.lb_algo)
    out.opt("lb_kind", vs.lb_kind)
    out.opt("persistence_timeout", vs.persistence_timeout)
    out.opt("protocol", vs.protocol)
    out.opt("quorum", vs.quorum)
    out.opt("hysteresis", vs.hysteresis)
    out.flag("alpha", vs.alpha)
    for real in vs.real_servers:
        _real_server(out, real)
    out.close()


def render(config: Config, header: str | None = None) -> str:
    """Return the keepalived.conf text for ``config``.

    ``header`` (optional, printable ASCII, may span lines) is written first as ``#`` comments.
    Raises ValueError naming the offending value if anything is unsafe to write.
    """
    if not isinstance(config, Config):
        raise ValueError(f"render: expected a Config, got {type(config).__name__}")
    out = _Writer()
    if header is not None:
        t.check_comment(header, "header")
        out.lines += [f"# {text}".rstrip() for text in header.split("\n")]
    for item in config.items:
        if out.lines:
            out.lines.append("")
        if isinstance(item, GlobalDefs):
            _global_defs(out, item)
        elif isinstance(item, VrrpScript):
            _vrrp_script(out, item)
        elif isinstance(item, TrackFile):
            _track_file(out, item)
        elif isinstance(item, VrrpInstance):
            _vrrp_instance(out, item)
        elif isinstance(item, VirtualServer):
            _virtual_server(out, item)
        elif isinstance(item, Include):
            out.line("include", word(item.path))
        else:  # pragma: no cover - Config rejects other types
            raise ValueError(f"render: cannot render {type(item).__name__}")
    return "".join(line + "\n" for line in out.lines)
