"""Property: whatever text goes into any string field, rendering never adds a directive.

For arbitrary text in every string field, either building the model (or rendering) raises a
ValueError naming the field, or:
- the rendered text parses back to an equal model, and
- read the way keepalived 2.2.7 reads it (lib/parser.c: comments, quotes, escapes, line
  continuation, parameter substitution, conditional and sequence lines, include lines, braces
  split out of words, 1023-byte line limit), it holds exactly the blocks and lines the model
  implies: the same first word and word count on every line at every nesting level, and as many
  '{' and '}' as the model has blocks.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keepalived_conf import (
    Authentication,
    Config,
    GlobalDefs,
    HttpGet,
    HttpUrl,
    Include,
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
    model,
    parse,
    render,
)

# ---------------------------------------------------------------------------------------------
# How keepalived reads a file (an independent model of lib/parser.c's read_line/alloc_strvec).

WHITE = " \t\f\n\r\v"
INCLUDE_WORDS = {"include", "includer", "includem", "includew", "includeb", "includea"}


def _decomment(line: str) -> str:
    """keepalived's decomment(): drop comments outside quotes; a final backslash continues."""
    line = line.lstrip(" \t")
    quote = False
    i = 0
    cut = None
    while i < len(line):
        c = line[i]
        if c == '"' and cut is None:
            quote = not quote
        elif c == "\\":
            assert i + 1 < len(line), "line ends in a backslash (continuation)"
            i += 1
        elif c in "#!" and not quote and cut is None:
            cut = i
        i += 1
    assert not quote, f"unterminated quote in {line!r}"
    return (line if cut is None else line[:cut]).rstrip(" \t")


def _words(line: str) -> list[str]:
    """alloc_strvec_r(): whitespace-separated words; a word starting with " runs to the next "."""
    words: list[str] = []
    i = 0
    while True:
        while i < len(line) and line[i] in WHITE:
            i += 1
        if i >= len(line):
            return words
        if line[i] == '"':
            end = line.find('"', i + 1)
            assert end >= 0, f"unmatched quote in {line!r}"
            words.append(line[i + 1 : end])
            i = end + 1
        else:
            j = i
            while j < len(line) and line[j] not in WHITE + '"':
                j += 1
            words.append(line[i:j])
            i = j


def _split_braces(line: str) -> list[str]:
    """read_line(): a '{' or '}' outside quotes ends the line; the rest is read as a new line."""
    pieces = []
    while line:
        i = 0
        quote = False
        while i < len(line):
            if line[i] == '"':
                quote = not quote
            elif line[i] in "{}" and not quote:
                break
            i += 1
        if i == len(line):
            pieces.append(line)
            break
        if i == 0:
            pieces.append(line[0])
            line = line[1:].lstrip(" \t")
        else:
            pieces.append(line[:i].rstrip(" \t"))
            line = line[i:]
    return [p for p in pieces if p]


def keepalived_view(text: str) -> list[Any]:
    """The tree of (first word, word count, children or None) keepalived would see."""
    assert "\x00" not in text
    root: list[Any] = []
    stack = [root]
    previous: list[Any] | None = None
    for raw in text.split("\n"):
        assert len(raw.encode()) < 1023, "fgets would split this line"
        line = _decomment(raw.rstrip("\r"))
        if not line:
            continue
        assert line[0] not in "@$~", f"conditional/definition/sequence line {line!r}"
        assert "$" not in line, f"parameter substitution in {line!r}"
        words = _words(line)
        if words[0] in INCLUDE_WORDS:
            assert words[0] == "include" and len(words) == 2 and len(stack) == 1, line
        for piece in _split_braces(line):
            if piece == "{":
                assert previous is not None and previous[2] is None, "unexpected {"
                children: list[Any] = []
                previous[2] = children
                stack.append(children)
            elif piece == "}":
                assert len(stack) > 1, "unexpected }"
                stack.pop()
                previous = None
            else:
                words = _words(piece)
                previous = [words[0], len(words), None]
                stack[-1].append(previous)
    assert len(stack) == 1, "unclosed block"
    return root


# ---------------------------------------------------------------------------------------------
# What the model implies (written from the model's meaning, not from the renderer's code).


def _line(first: object, count: int) -> list[Any]:
    return [str(first), count, None]


def _block(first: str, count: int, children: list[Any]) -> list[Any]:
    return [first, count, children]


def _opt(node: object, *names: str) -> list[Any]:
    return [_line(n, 2) for n in names if getattr(node, n) is not None]


def expected_view(config: Config) -> list[Any]:
    view: list[Any] = []
    for item in config.items:
        if isinstance(item, GlobalDefs):
            kids = _opt(item, "router_id", "vrrp_version", "vrrp_garp_master_delay",
                        "vrrp_garp_master_repeat", "vrrp_garp_master_refresh")
            if item.vrrp_higher_prio_send_advert:
                kids.append(_line("vrrp_higher_prio_send_advert", 1))
            if item.enable_script_security:
                kids.append(_line("enable_script_security", 1))
            if item.script_user is not None:
                kids.append(_line("script_user", 2 + (item.script_group is not None)))
            if item.lvs_sync_daemon is not None:
                sync = item.lvs_sync_daemon
                count = 2 + 2 * (sync.instance is not None) + 2 * (sync.sync_id is not None)
                kids.append(_line("lvs_sync_daemon", count))
            kids += _opt(item, "max_auto_priority")
            view.append(_block("global_defs", 1, kids))
        elif isinstance(item, VrrpScript):
            kids = [_line("script", 2)]
            kids += _opt(item, "interval", "timeout", "rise", "fall", "weight")
            if item.user is not None:
                kids.append(_line("user", 2 + (item.group is not None)))
            view.append(_block("vrrp_script", 2, kids))
        elif isinstance(item, TrackFile):
            kids = [_line("file", 2)] + _opt(item, "weight", "init_file")
            view.append(_block("track_file", 2, kids))
        elif isinstance(item, VrrpInstance):
            kids = _opt(item, "state", "interface", "virtual_router_id", "priority", "version",
                        "advert_int")
            if item.nopreempt:
                kids.append(_line("nopreempt", 1))
            kids += _opt(item, "garp_master_delay", "garp_master_refresh")
            if item.authentication is not None:
                kids.append(_block("authentication", 1,
                                   [_line("auth_type", 2), _line("auth_pass", 2)]))
            kids += _opt(item, "unicast_src_ip")
            if item.unicast_peers:
                kids.append(_block("unicast_peer", 1, [_line(p, 1) for p in item.unicast_peers]))
            if item.virtual_ipaddresses:
                kids.append(_block("virtual_ipaddress", 1, [
                    _line(v.address, 1 + 2 * (v.dev is not None) + 2 * (v.label is not None))
                    for v in item.virtual_ipaddresses]))
            if item.track_scripts:
                kids.append(_block("track_script", 1, [
                    _line(s.name, 1 + 2 * (s.weight is not None)) for s in item.track_scripts]))
            if item.track_files:
                kids.append(_block("track_file", 1, [
                    _line(f.name, 1 + 2 * (f.weight is not None)) for f in item.track_files]))
            kids += _opt(item, "notify_master", "notify_backup", "notify_fault", "notify_stop",
                         "notify")
            view.append(_block("vrrp_instance", 2, kids))
        elif isinstance(item, VirtualServer):
            kids = _opt(item, "delay_loop", "lb_algo", "lb_kind", "persistence_timeout",
                        "protocol", "quorum", "hysteresis")
            if item.alpha:
                kids.append(_line("alpha", 1))
            for real in item.real_servers:
                rkids = _opt(real, "weight")
                if real.inhibit_on_failure:
                    rkids.append(_line("inhibit_on_failure", 1))
                if real.checker is not None:
                    c = real.checker
                    ckids = []
                    if isinstance(c, HttpGet | SslGet):
                        for url in c.urls:
                            ckids.append(_block("url", 1, [_line("path", 2)]
                                                + _opt(url, "status_code")))
                    ckids += _opt(c, "connect_port", "connect_timeout", "retry",
                                  "delay_before_retry", "warmup")
                    rkids.append(_block(c.KEYWORD, 1, ckids))
                kids.append(_block("real_server", 3, rkids))
            view.append(_block("virtual_server", 3, kids))
        elif isinstance(item, Include):
            view.append(_line("include", 2))
    return view


def count_blocks(view: list[Any]) -> int:
    return sum(1 + count_blocks(node[2]) for node in view if node[2] is not None)


# ---------------------------------------------------------------------------------------------
# Strategies. Every string field gets, by chance, a valid value, a near miss, a valid value with
# a hostile piece spliced in, a hostile piece alone, or arbitrary unicode text. How often a field
# goes bad is drawn per example (never, rarely, often, always), so that many examples build whole
# configs and others attack every field at once.

HOSTILE_CHARS = ["\n", "\r", "\t", " ", "{", "}", "#", "!", '"', "'", "\\", "$", "@", "~", "\x00",
                 "\x0b", "\x7f", "\u2028", "\u00a0", "\u00e9"]
HOSTILE = HOSTILE_CHARS + [
    "$X", "${_HASH}", "~SEQ(x,1,3)", "include", "include x", "\ninclude /etc/passwd\n",
    "} x {", "\nvrrp_instance evil {\n", "\\\n", "x" * 1100]
VALID = {
    "name": ["eth0", "VI_1", "k0s-vip-0", "chk.api", "eth0:vip", "0", "_x", "inst", "id"],
    "ip": ["10.0.0.1", "192.168.1.100", "2001:db8::1", "::1", "FE80::1"],
    "cidr": ["10.0.0.1/24", "10.0.0.1", "2001:db8::1/64", "192.168.1.100/32", "::/0"],
    "script": ["/bin/true", "/usr/bin/curl -sf http://127.0.0.1:6443/readyz", "/x  y",
               "/a/b c;d|e&f`g` @h ~i"],
    "password": ["k0s", "12345678", "p@ss~w;d", "%s&(x)"],
    "path": ["/etc/keepalived/vs.conf", "vs-*.conf", "conf.d/[ab].conf", "a?"],
    "url": ["/healthz", "/readyz?verbose", "/livez?x=1&y=%20", "/", "/~u/@x;y"],
}
NEAR_MISS = {
    "name": ["include", "includea", "-x", ".x", "", "eth0/1", "x" * 256],
    "ip": ["1.2.3", "10.0.0.01", "10.0.0.1/32", "fe80::1%eth0", "", "::ffff:1.2.3.4.5"],
    "cidr": ["10.0.0.1/33", "10.0.0.1/", "10.0.0.1/0x1", "2001:db8::1/129", "/24"],
    "script": ["", " /bin/true", "/bin/true ", "x" * 513],
    "password": ["123456789", "", "a b"],
    "path": ["", "{a,b}.conf", "x" * 256],
    "url": ["healthz", "", "/a b", "/a#b"],
}


class Builder:
    """Builds model objects from drawn values, checking that failures name their field."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.rejected = 0
        self.hostility = data.draw(st.sampled_from([0, 0, 3, 25, 100]), label="hostility %")
        # Besides that rate, exactly one text field (the target-th drawn) always goes bad, so
        # that many examples are a whole valid config but for one attacked value.
        self.target = data.draw(st.integers(1, 15), label="attacked text field")
        self.texts = 0

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def bad(self) -> bool:
        return self.draw(st.integers(0, 99)) < self.hostility

    def text(self, kind: str) -> str:
        good = st.sampled_from(VALID[kind])
        self.texts += 1
        if self.texts != self.target and not self.bad():
            return str(self.draw(good))
        hostile = st.sampled_from(HOSTILE)
        short = st.sampled_from(["", "a", "x1"])
        return str(self.draw(st.one_of(
            st.tuples(good, hostile, good).map("".join),
            st.tuples(short, hostile, short).map("".join),
            st.tuples(good, hostile).map("".join),
            st.sampled_from(NEAR_MISS[kind]),
            hostile,
            st.text(max_size=12),
        )))

    def name(self) -> str:
        return self.text("name")

    def number(self, low: int, high: int) -> int:
        if not self.bad():
            return int(self.draw(st.integers(low, min(high, low + 100))))
        return int(self.draw(st.sampled_from([low - 1, high + 1, 2**40, -(2**40)])))

    def seconds(self, low: float = 0.01, high: float = 255) -> float:
        if not self.bad():
            return float(self.draw(st.sampled_from([low, 0.1, 0.5, 1, 1.5, 2, 60, high])))
        return float(self.draw(st.sampled_from(
            [float("nan"), float("inf"), -1.0, 1e-7, 0.001, high + 1])))

    def maybe(self, make: Any, *args: Any) -> Any:
        return make(*args) if self.draw(st.booleans()) else None

    def make(self, cls: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return cls(*args, **kwargs)
        except ValueError as err:
            assert str(err).startswith(cls.__name__ + "."), str(err)
            assert "\n" not in str(err)
            self.rejected += 1
            return None

    def some(self, make_one: Any, most: int) -> list[Any]:
        made = [make_one() for _ in range(self.draw(st.integers(0, most)))]
        return [m for m in made if m is not None]

    def global_defs(self) -> Any:
        sync = None
        if self.draw(st.booleans()):
            sync = self.make(LvsSyncDaemon, self.name(), self.maybe(self.name),
                             self.maybe(self.number, 0, 255))
        user = self.maybe(self.name)
        return self.make(
            GlobalDefs, router_id=self.maybe(self.name),
            vrrp_version=self.maybe(self.number, 2, 3),
            vrrp_garp_master_delay=self.maybe(self.number, 0, 86400),
            vrrp_garp_master_repeat=self.maybe(self.number, 1, 255),
            vrrp_garp_master_refresh=self.maybe(self.number, 0, 86400),
            vrrp_higher_prio_send_advert=self.draw(st.booleans()),
            enable_script_security=self.draw(st.booleans()),
            script_user=user, script_group=self.maybe(self.name) if user else None,
            lvs_sync_daemon=sync, max_auto_priority=self.maybe(self.number, -1, 99),
        )

    def vrrp_script(self) -> Any:
        user = self.maybe(self.name)
        return self.make(
            VrrpScript, self.name(), self.text("script"),
            interval=self.maybe(self.number, 1, 4294), timeout=self.maybe(self.number, 1, 4294),
            rise=self.maybe(self.number, 1, 100), fall=self.maybe(self.number, 1, 100),
            weight=self.maybe(self.number, -253, 253),
            user=user, group=self.maybe(self.name) if user else None,
        )

    def track_file(self) -> Any:
        return self.make(TrackFile, self.name(), self.text("path"),
                         weight=self.maybe(self.number, -254, 254),
                         init_file=self.maybe(self.number, -5, 5))

    def vrrp_instance(self) -> Any:
        auth = None
        if self.draw(st.booleans()):
            auth = self.make(Authentication, self.text("password"))
        vips = self.some(lambda: self.make(
            VirtualIPAddress, self.text("cidr"), self.maybe(self.name), self.maybe(self.name)), 3)
        tracks = self.some(lambda: self.make(
            TrackScript, self.name(), self.maybe(self.number, -253, 253)), 2)
        files = self.some(lambda: self.make(
            TrackFileRef, self.name(), self.maybe(self.number, -254, 254)), 2)
        notify = {name: self.maybe(self.text, "script") for name in VrrpInstance.NOTIFY_FIELDS}
        return self.make(
            VrrpInstance, self.name(), self.name(), self.number(1, 255), self.number(1, 255),
            state=self.draw(st.sampled_from([None, "MASTER", "BACKUP"]))
            if not self.bad() else "backup",
            version=self.maybe(self.number, 2, 3),
            advert_int=self.maybe(self.seconds), nopreempt=self.draw(st.booleans()),
            garp_master_delay=self.maybe(self.number, 0, 86400),
            garp_master_refresh=self.maybe(self.number, 0, 86400),
            authentication=auth, unicast_src_ip=self.maybe(self.text, "ip"),
            unicast_peers=[self.text("ip") for _ in range(self.draw(st.integers(0, 3)))],
            virtual_ipaddresses=vips, track_scripts=tracks, track_files=files, **notify,
        )

    def checker(self) -> Any:
        common = dict(
            connect_port=self.maybe(self.number, 1, 65535),
            connect_timeout=self.maybe(self.seconds, 0.000001, 600),
            retry=self.maybe(self.number, 0, 10),
            delay_before_retry=self.maybe(self.seconds, 0, 600),
            warmup=self.maybe(self.seconds, 0, 600),
        )
        kind = self.draw(st.sampled_from([TcpCheck, HttpGet, SslGet]))
        if kind is TcpCheck:
            return self.make(TcpCheck, **common)
        urls = self.some(lambda: self.make(
            HttpUrl, self.text("url"), self.maybe(self.number, 100, 599)), 2)
        return self.make(kind, urls=urls, **common)

    def virtual_server(self) -> Any:
        port = self.number(1, 65535)
        reals = self.some(lambda: self.make(
            RealServer, self.text("ip"), port if not self.bad() else self.number(1, 65535),
            weight=self.maybe(self.number, 0, 65535),
            inhibit_on_failure=self.draw(st.booleans()),
            checker=self.maybe(self.checker)), 3)
        return self.make(
            VirtualServer, self.text("ip"), port,
            delay_loop=self.maybe(self.seconds, 0.000001, 600),
            lb_algo=self.draw(st.sampled_from(["rr", "wlc", "sh"])) if not self.bad() else "RR",
            lb_kind=self.draw(st.sampled_from(["DR", "NAT", "TUN"])),
            persistence_timeout=self.maybe(self.number, 1, 2678400),
            protocol=self.draw(st.sampled_from(["TCP", "UDP"])),
            quorum=self.maybe(self.number, 1, 100), hysteresis=self.maybe(self.number, 0, 100),
            alpha=self.draw(st.booleans()), real_servers=reals,
        )

    def config(self) -> Config:
        makers = [self.global_defs, self.vrrp_script, self.vrrp_instance, self.virtual_server,
                  self.track_file, lambda: self.make(Include, self.text("path"))]
        items: list[Any] = []
        for _ in range(self.draw(st.integers(0, 5))):
            item = self.draw(st.sampled_from(makers))()
            if item is None:
                continue
            try:  # rules between blocks: one global_defs, VRRP-version-dependent settings
                Config([*items, item])
            except ValueError as err:
                assert str(err).startswith(("Config.items: ", "VrrpInstance.")), str(err)
                continue
            items.append(item)
        return Config(items)


HEADERS = st.one_of(st.none(), st.sampled_from(VALID["script"] + HOSTILE), st.text())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), HEADERS)
def test_random_configs_hold_exactly_their_directives(
    data: st.DataObject, header: str | None
) -> None:
    builder = Builder(data)
    config = builder.config()
    event(f"top-level items: {min(len(config.items), 3)}{'+' if len(config.items) >= 3 else ''}")
    event(f"values rejected: {min(builder.rejected, 5)}{'+' if builder.rejected >= 5 else ''}")
    try:
        text = render(config, header=header)
    except ValueError as err:
        assert str(err).startswith("header: ")
        header = None
        text = render(config)
    assert render(parse(text), header=header) == text
    check_rendered(config, text)


def check_rendered(config: Config, text: str) -> None:
    """The property itself: round trip, and keepalived sees exactly the modelled structure."""
    assert parse(text) == config
    view = keepalived_view(text)
    assert view == expected_view(config)
    assert text.count("{") == text.count("}") == count_blocks(view)


# ---------------------------------------------------------------------------------------------
# Every string field of a config that uses every feature, attacked one at a time.

FULL = Config((
    GlobalDefs(router_id="node-1", vrrp_version=3, vrrp_garp_master_delay=1,
               vrrp_garp_master_repeat=1, vrrp_garp_master_refresh=1,
               enable_script_security=True, script_user="root", script_group="root",
               lvs_sync_daemon=LvsSyncDaemon("eth0", "VI_1", 1), max_auto_priority=1),
    VrrpScript("chk", "/bin/true x", interval=1, timeout=1, rise=1, fall=1, weight=1,
               user="root", group="root"),
    TrackFile("tf", "/run/ipvslb/tf", weight=0, init_file=0),
    VrrpInstance("VI_1", "eth0", 51, 100, state="BACKUP", version=2, advert_int=1,
                 nopreempt=True, garp_master_delay=1, garp_master_refresh=1,
                 authentication=Authentication("pw"), unicast_src_ip="10.0.0.1",
                 unicast_peers=("10.0.0.2", "10.0.0.3"),
                 virtual_ipaddresses=(VirtualIPAddress("10.0.0.10/24", "eth0", "eth0:v"),),
                 track_scripts=(TrackScript("chk", 2),), track_files=(TrackFileRef("tf", 1),),
                 notify_master="/bin/m a", notify_backup="/bin/b a", notify_fault="/bin/f a",
                 notify_stop="/bin/s a", notify="/bin/n a"),
    VirtualServer("10.0.0.10", 6443, delay_loop=1, lb_algo="rr", lb_kind="DR",
                  persistence_timeout=1, protocol="TCP", quorum=1, hysteresis=1, alpha=True,
                  real_servers=(
                      RealServer("10.0.0.2", 6443, 1, True, TcpCheck(connect_port=1)),
                      RealServer("10.0.0.3", 6443, 1, True, HttpGet(urls=(HttpUrl("/h", 200),))),
                      RealServer("10.0.0.4", 6443, 1, True, SslGet(urls=(HttpUrl("/h", 200),))),
                  )),
    Include("/etc/keepalived/x.conf"),
))

Path = tuple[str | int, ...]


def string_paths(value: Any, path: Path = ()) -> list[Path]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, tuple):
        return [p for i, item in enumerate(value) for p in string_paths(item, (*path, i))]
    if dataclasses.is_dataclass(value):
        return [p for f in dataclasses.fields(value)
                for p in string_paths(getattr(value, f.name), (*path, f.name))]
    return []


def replace_at(value: Any, path: Path, new: str) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(value)
        items[head] = replace_at(items[head], rest, new)
        return tuple(items)
    return dataclasses.replace(value, **{head: replace_at(getattr(value, head), rest, new)})


def objects_on(path: Path) -> list[Any]:
    objs: list[Any] = []
    obj: Any = FULL
    for step in path[:-1]:
        obj = obj[step] if isinstance(step, int) else getattr(obj, step)
        objs.append(obj)
    return objs


def owner(path: Path) -> str:
    """How a rejection of the value at ``path`` must start, e.g. 'VrrpInstance.unicast_peers[1]'."""
    obj: Any = FULL
    for step in path[:-1]:
        obj = obj[step] if isinstance(step, int) else getattr(obj, step)
    if isinstance(path[-1], int):
        parent: Any = FULL
        for step in path[:-2]:
            parent = parent[step] if isinstance(step, int) else getattr(parent, step)
        return f"{type(parent).__name__}.{path[-2]}[{path[-1]}]"
    return f"{type(obj).__name__}.{path[-1]}"


STRING_PATHS = string_paths(FULL)


def attack(path: Path, value: str) -> bool:
    """Put ``value`` at ``path``; True when accepted (and then the property holds)."""
    try:
        config = replace_at(FULL, path, value)
    except ValueError as err:
        # Named: the attacked field, or (rules between fields) a field of an enclosing object.
        message = str(err)
        enclosing = {type(obj).__name__ for obj in objects_on(path)}
        assert message.startswith(owner(path) + ": ") or (
            re.match(r"(\w+)\.[\w.\[\]]+: ", message)
            and message.partition(".")[0] in enclosing
        ), (path, message)
        assert "\n" not in message
        return False
    check_rendered(config, render(config))
    return True


def test_every_string_field_is_covered() -> None:
    """FULL sets every string field of every model class, so the attacks reach them all."""
    covered = {owner(path).partition("[")[0] for path in STRING_PATHS}
    declared = {
        f"{cls.__name__}.{f.name}"
        for cls in vars(model).values()
        if isinstance(cls, type) and dataclasses.is_dataclass(cls)
        and cls.__module__ == model.__name__
        for f in dataclasses.fields(cls)
        if "str" in str(f.type) or "Literal" in str(f.type)
    }
    assert declared - covered == set()
    check_rendered(FULL, render(FULL))
    for path in STRING_PATHS:  # the unmodified value is accepted
        assert attack(path, replace_at_value(path))


def replace_at_value(path: Path) -> str:
    obj: Any = FULL
    for step in path:
        obj = obj[step] if isinstance(step, int) else getattr(obj, step)
    return str(obj)


@pytest.mark.parametrize("path", STRING_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_hostile_text_in_each_string_field(path: Path) -> None:
    original = replace_at_value(path)
    for piece in HOSTILE:
        for value in (piece, original + piece, piece + original, original + piece + original,
                      "a" + piece + "b"):
            attack(path, value)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(STRING_PATHS), st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(HOSTILE_CHARS + list("aZ09._:/-=+*?[]%&;,~@ ")))))
def test_arbitrary_text_in_any_string_field(path: Path, value: str) -> None:
    attack(path, value)


def test_the_view_detects_injection() -> None:
    """The checker above can fail: text with injected structure does not match the model."""
    config = Config([VrrpInstance("a", "eth0", 1, 1,
                                  virtual_ipaddresses=[VirtualIPAddress("10.0.0.1")])])
    good = render(config)
    assert keepalived_view(good) == expected_view(config)
    injected = good.replace("interface eth0", "interface eth0 }\nvrrp_instance b {")
    assert keepalived_view(injected) != expected_view(config)
    for bad in ["interface eth0 \\", "interface $X", "@node interface eth0",
                "interface eth0\ninclude /etc/passwd"]:
        try:
            view = keepalived_view(good.replace("interface eth0", bad))
        except AssertionError:
            continue
        assert view != expected_view(config), bad
