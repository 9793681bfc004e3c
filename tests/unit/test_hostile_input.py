"""Hostile and careless input (issue 17): every field, every reader, every option.

Property tests put hostile scalars and shapes into every field of the configuration and check
the promise: a Config that keepalived's files render for, or one line per problem naming the
field, never another exception. Examples cover the YAML reader's bounds, the run directory's
ownership, the all-or-nothing render and the executable check.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvslb import files
from ipvslb.config import yamlread
from ipvslb.config.formats import config_from_document
from ipvslb.config.scalars import parse_uint, shown
from ipvslb.config.validate import run_dir_problem
from ipvslb.errors import ConfigError, UserError
from ipvslb.keepalived.desired import check_renders

ROOT = Path(__file__).resolve().parents[2]


def base() -> dict[str, Any]:
    return {
        "node": {"runDir": "/run/ipvslb", "apiserverHealth": {}},
        "endpoints": {"source": "static", "static": ["10.0.0.11", "10.0.0.12:6443"]},
        "controlPlaneLoadBalancing": {"keepalived": {
            "vrrpInstances": [{"virtualIPs": ["10.0.0.100/24"], "interface": "eth0",
                               "advertIntervalSeconds": 1, "authPass": "secret",
                               "unicastSourceIP": "10.0.0.11",
                               "unicastPeers": ["10.0.0.12"]}],
            "virtualServers": [{"ipAddress": "10.0.0.100", "delayLoop": "5s"}],
        }},
    }


KA = ("controlPlaneLoadBalancing", "keepalived")
INST = (*KA, "vrrpInstances", 0)
VS = (*KA, "virtualServers", 0)
# Every field a user sets, as a path into base().
FIELDS: list[tuple[Any, ...]] = [
    ("node", key) for key in ("role", "apiServerPort", "runDir", "keepalivedPath",
                              "dummyInterface", "priority", "kubeconfig", "realServerCheck",
                              "lvsSyncDaemon")
] + [("node", "apiserverHealth", key) for key in ("enabled", "interval", "timeout", "rise",
                                                   "fall")] + [
    ("endpoints", "source"), ("endpoints", "static"), ("endpoints", "static", 0),
    (*KA, "userSpaceProxyBindPort"), (*KA, "disableLoadBalancer"), (*KA, "vrrpInstances"),
    (*KA, "virtualServers"), ("node",), ("endpoints",), KA,
] + [(*INST, key) for key in ("virtualIPs", "interface", "virtualRouterID",
                              "advertIntervalSeconds", "authPass", "unicastSourceIP",
                              "unicastPeers", "addressLabel")] + [
    (*INST, "virtualIPs", 0), (*INST, "unicastPeers", 0), (*INST, "advertInterval"),
] + [(*VS, key) for key in ("ipAddress", "delayLoop", "lbAlgo", "lbKind",
                            "persistenceTimeoutSeconds")]

SUPERSCRIPTS = "\u00b2\u00b3\u00b9\u2070\u2074"
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
            max_size=3),  # lone surrogates
    st.sampled_from([
        "", " ", "$", "pa$s", "p\u00e9ss", "\U0001f600", "eth0@1", "eth0+", "fe80::1%eth0",
        "fe80::1%eth0/64", "::ffff:10.0.0.100/120", "::ffff:10.0.0.11", "10.0.0.100",
        "10.0.0.100:6444", "127.0.0.1:6444", "10.0.0.11:\u00b2", "1ns", "1000000h", "0s",
        "-1s", ".inf", "nan", "1e400s", "2024-13-45", "/tmp", "/", "/run", "/etc", "/home/x",
        "/run/ip@vslb", "/" + "a" * 400, "x" * 5000, "9" * 5000 + "s", "${_PWD}", "include",
        "controller+worker", "tcp", "https", "DR", "NAT", "rr", "10.0.0.100/24",
        "fd00::1/64", "[fd00::3]:6443", "10.0.0.11:0", "10.0.0.11:65536",
    ]),
    st.text(alphabet=SUPERSCRIPTS + "0123456789:.", min_size=1, max_size=8),
)
hostile_number = st.one_of(
    st.integers(), st.integers(min_value=2**64, max_value=2**20000),
    st.integers(min_value=-(2**20000), max_value=-(2**64)), st.floats(),
    st.sampled_from([0, 1, -1, 255, 256, 65535, 65536, 0.001, 1e-9, 1e308, 2**31, 2**32]),
)
hostile_scalar = st.one_of(st.none(), st.booleans(), hostile_number, hostile_text)
hostile_value = st.recursive(
    hostile_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(hostile_text, hostile_number), inner,
                                            max_size=3)),
    max_leaves=10,
)


def put(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def assert_kept_promise(doc: Any) -> None:
    """A config that renders, or one printable line per problem; no other exception."""
    try:
        config = config_from_document(doc)
    except ConfigError as err:
        assert err.problems
        for line in err.problems:
            assert "\n" not in line and len(line) < 1000, line
            line.encode("utf-8")  # printable: no lone surrogate reaches the terminal
        return
    assert check_renders(config) is None
    node = config.node
    for seconds in (node.apiserver_health.interval, node.apiserver_health.timeout,
                    *(vs.delay_loop for vs in config.virtual_servers)):
        assert 0.1 <= seconds <= 3600
    for ip, port in config.endpoints.static:
        assert 1 <= port <= 65535 and ip not in {v.ip for v in config.all_vips}
    assert run_dir_problem(node.run_dir) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(FIELDS), value=hostile_value)
def test_any_value_in_any_field_keeps_the_promise(path: tuple[Any, ...], value: Any) -> None:
    assert_kept_promise(put(base(), path, value))


@settings(max_examples=150, deadline=None)
@given(doc=hostile_value)
def test_any_document_shape_keeps_the_promise(doc: Any) -> None:
    assert_kept_promise(doc)
    assert_kept_promise({"apiVersion": "k0s.k0sproject.io/v1beta1", "kind": "ClusterConfig",
                         "spec": doc})


@given(text=st.text(max_size=12))
def test_parse_uint_never_raises_and_takes_only_ascii_digits(text: str) -> None:
    value = parse_uint(text, 0, 65535)
    if value is not None:
        assert text.isascii() and text.isdigit() and int(text) == value


@given(value=hostile_value)
def test_shown_is_short_printable_and_total(value: Any) -> None:
    text = shown(value)
    assert len(text) <= 60 and text.isascii()


def problems_of(doc: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_document(doc)
    return info.value.problems


@pytest.mark.parametrize(("path", "value", "expected"), [
    ((*INST, "authPass"), "pa$s", "authPass: may hold only printable ASCII"),
    ((*INST, "authPass"), "p\u00e9ss", "authPass: may hold only printable ASCII"),
    ((*INST, "authPass"), "\ud800", "authPass: '\\ud800' has control characters, invalid"),
    ((*INST, "interface"), "eth0@1", "interface: 'eth0@1' may hold only ASCII letters"),
    ((*INST, "interface"), "eth0+", "interface: 'eth0+' may hold only ASCII letters"),
    ((*INST, "virtualIPs", 0), "fe80::1%eth0/64", "has a zone id"),
    ((*INST, "virtualIPs", 0), "::ffff:10.0.0.100/120", "is an IPv4-mapped IPv6 address"),
    ((*INST, "unicastPeers", 0), "10.0.0.100", "unicastPeers[0]: 10.0.0.100 is also a VIP"),
    ((*INST, "advertInterval"), float("inf"), "advertInterval: must be from 0.01"),
    ((*INST, "advertInterval"), 10**400, "advertInterval: must be from 0.01"),
    ((*VS, "delayLoop"), "1ns", "delayLoop: must be a duration from 1s to 1h"),
    ((*VS, "delayLoop"), "1000000h", "delayLoop: must be a duration from 1s to 1h"),
    (("node", "apiserverHealth", "interval"), float("nan"), "interval: must be a duration"),
    (("node", "apiserverHealth", "interval"), "1ns", "interval: must be a duration"),
    (("node", "apiserverHealth", "interval"), float("inf"), "interval: must be a duration"),
    (("node", "apiServerPort"), 10**5000, "apiServerPort: must be from 1 to 65535, got a "
     "number of"),
    (("node", "runDir"), "/tmp", "node.runDir: '/tmp' is a directory other programs share"),
    (("node", "runDir"), "/run/ip@vslb", "node.runDir: '/run/ip@vslb' must be an absolute"),
    (("node", "runDir"), "/" + "a" * 400, "must be an absolute path of at most 100"),
    (("endpoints", "static", 0), "10.0.0.100", "10.0.0.100:6443 is a VIP"),
    (("endpoints", "static", 0), "127.0.0.1:6444", "uses the userspace proxy's port 6444"),
    (("endpoints", "static", 0), "10.0.0.11:\u00b2", "endpoints.static[0]: '10.0.0.11:\\xb2' "
     "has a bad port"),
    (("endpoints", "static", 0), "fe80::1%eth0", "has a zone id"),
    (("endpoints", "static"), ["fd00::1", "fd00::2"], "endpoints.static: has no IPv4 address "
     "for the virtual server 10.0.0.100"),
    (("endpoints", "static", 0), "10.0.0.11:7443", "has another port than the virtual "
     "servers' 6443; DR forwarding keeps the port"),
], ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else shown(v)[:30])
def test_validate_is_as_strict_as_render(path: tuple[Any, ...], value: Any,
                                         expected: str) -> None:
    doc = put(base(), path, value)
    if path[-1] == "advertInterval":
        del doc["controlPlaneLoadBalancing"]["keepalived"]["vrrpInstances"][0][
            "advertIntervalSeconds"]
    found = problems_of(doc)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize("run_dir", ["/", "/tmp", "/var/tmp", "/run", "/var/run", "/etc",
                                     "/home/alice", "/root", "/run/user/1000", "/proc/1",
                                     "/dev/shm", "/run/", "/run//ipvslb", "/run/../etc"])
def test_shared_and_odd_run_dirs_are_refused(run_dir: str) -> None:
    assert run_dir_problem(run_dir) is not None


def test_role_override_with_a_node_of_the_wrong_shape() -> None:
    for node in (["a"], "controller", 5):
        doc = put(base(), ("node",), node)
        with pytest.raises(ConfigError) as info:
            config_from_document(doc, role_override="controller")
        assert info.value.problems[0].startswith("node: must be a mapping")


def test_endpoint_duplicates_are_found_in_linear_time() -> None:
    """20,000 endpoints with one duplicate at the end: a quadratic check takes ~10 s here."""
    many = [str(ipaddress.IPv4Address("10.1.0.0") + i) for i in range(20000)]
    doc = put(base(), ("endpoints", "static"), many + [many[0]])
    assert problems_of(doc) == [f"endpoints.static[20000]: '{many[0]}' is listed twice; remove "
                                "the duplicate"]


# -- the YAML reader ------------------------------------------------------------------------

LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize(("text", "expected"), [
    (LAUGHS, "refused"),
    ("[" * 10000 + "]" * 10000, "refused"),
    ("".join("  " * i + f"k{i}:\n" for i in range(200)), "refused"),
    ("a: 1\nb: 2\na: 3\n", "'a'"),
    ("controlPlaneLoadBalancing: {}\ncontrolPlaneLoadBalancing: {}\n",
     "'controlPlaneLoadBalancing'"),
    ("a: " + "9" * 5000, "an integer of 5000 characters"),
    ("a: 0x" + "f" * 5000, "an integer of 5002 characters"),
    ("a: " + "1:" * 3000 + "1", "an integer of 6001 characters"),
    ("a: !!int abc", "!!int value does not convert"),
    ("a: !!bool maybe", "!!bool value does not convert"),
    ("a: !!float x", "!!float value does not convert"),
    ("a: !!python/object:os.system x", "not valid YAML"),
])
def test_reader_refuses_in_one_line(text: str, expected: str) -> None:
    with pytest.raises(UserError) as info:
        yamlread.parse(text, "f.yaml")
    message = info.value.message
    assert expected in message and "\n" not in message and message.startswith("f.yaml: ")


def test_reader_keeps_dates_and_merges() -> None:
    assert yamlread.parse("a: 2024-13-45\nb: 2024-01-01", "f") == {"a": "2024-13-45",
                                                                     "b": "2024-01-01"}
    assert yamlread.parse("x: &x {a: 1}\ny: {<<: *x, b: 2}", "f")["y"] == {"a": 1, "b": 2}


def test_reader_refuses_big_binary_and_special_files(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * yamlread.MAX_BYTES)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    for path, expected in ((big, "larger than 1024 KiB"),
                           (binary, "not UTF-8 text"), (fifo, "is not a regular file"),
                           (tmp_path, "is a directory"), (Path("/dev/zero"), "not a regular")):
        with pytest.raises(UserError, match=expected):
            yamlread.read(path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipvslb", *args], capture_output=True,
                          text=True, timeout=60)


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_cli_refuses_billion_laughs_and_duplicate_keys(tmp_path: Path) -> None:
    laughs = tmp_path / "k0s.yaml"
    laughs.write_text("apiVersion: k0s.k0sproject.io/v1beta1\nkind: ClusterConfig\n" + LAUGHS)
    assert "refused" in one_error_line(run_cli("validate", "-c", str(laughs)))
    dup = tmp_path / "dup.yaml"
    dup.write_text((ROOT / "examples/ipvslb.yaml").read_text() + "node: {}\n")
    assert "'node'" in one_error_line(run_cli("validate", "-c", str(dup)))


# -- files: all-or-nothing render, run directory, executables -------------------------------


def test_render_output_dir_writes_nothing_when_one_file_cannot_be(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "vs-0.conf").mkdir(parents=True)  # keepalived.conf sorts after it: written first
    example = str(ROOT / "examples/ipvslb.yaml")
    line = one_error_line(run_cli("render", "-c", example, "--output-dir", str(out),
                                  "--priority", "100"))
    assert "nothing was written" in line
    assert sorted(p.name for p in out.iterdir()) == ["vs-0.conf"]
    under_file = tmp_path / "file"
    under_file.write_text("x")
    assert "nothing was written" in one_error_line(run_cli(
        "render", "-c", example, "--output-dir", str(under_file / "sub"), "--priority", "100"))
    assert "nothing was written" in one_error_line(run_cli(
        "render", "-c", example, "--output-dir", "/proc/ipvslb", "--priority", "100"))


def test_write_all_atomic_removes_the_directories_it_created(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        files.write_all_atomic(tmp_path / "a" / "b", {"x": "1", "y/z": "2"})
    assert list(tmp_path.iterdir()) == []
    files.write_all_atomic(tmp_path / "a", {"x": "1", "y": "2"})
    assert (tmp_path / "a" / "y").read_text() == "2"
    assert (tmp_path / "a" / "x").stat().st_mode & 0o777 == 0o600


def test_run_dir_is_claimed_with_a_marker_and_foreign_ones_are_left_alone(tmp_path: Path
                                                                          ) -> None:
    fresh = tmp_path / "fresh" / "run"
    files.claim_run_dir(fresh)
    assert files.owns_run_dir(fresh) and fresh.stat().st_mode & 0o777 == 0o700
    (fresh / "keepalived.conf").write_text("x")
    files.remove_run_files(fresh, ["keepalived.conf"])
    files.release_run_dir(fresh)
    assert not fresh.exists()

    foreign = tmp_path / "etc-like"
    foreign.mkdir(mode=0o755)
    (foreign / "keepalived.conf").write_text("someone else's")
    (foreign / "passwd").write_text("root:x:0:0")
    with pytest.raises(UserError, match="was not created by ipvslb and holds passwd"):
        files.claim_run_dir(foreign)
    files.remove_run_files(foreign, ["keepalived.conf"])  # `down` on a foreign directory
    files.release_run_dir(foreign)
    assert (foreign / "keepalived.conf").read_text() == "someone else's"
    assert foreign.stat().st_mode & 0o777 == 0o755

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(UserError, match="may be written by other users"):
        files.claim_run_dir(shared)
    assert shared.stat().st_mode & 0o7777 == 0o1777

    legacy = tmp_path / "legacy"  # an older ipvslb's run directory: only its own files
    legacy.mkdir(mode=0o700)
    for name in ("keepalived.conf", "state-0", "vrrp.pid", ".keepalived.conf.ab12cd_3"):
        (legacy / name).write_text("x")
    files.claim_run_dir(legacy)
    assert files.owns_run_dir(legacy)


def test_executable_check(tmp_path: Path) -> None:
    script = tmp_path / "prog"
    script.write_text("#!/bin/sh\n")
    assert files.executable_problem(str(tmp_path)) == "is a directory"
    assert files.executable_problem(str(script)) == "is not executable"
    assert files.executable_problem(str(tmp_path / "none")) == "does not exist"
    script.chmod(0o755)
    assert files.executable_problem(str(script)) is None


# -- command-line options -------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["show", "-t", "10.0.0.1:\u00b2"], ["show", "-f", "\u00b9"], ["show", "-f", "9" * 5000],
    ["show", "-t", "[fe80::1]:\u00b3"],
])
def test_show_refuses_non_ascii_digits_in_one_line(args: list[str]) -> None:
    assert "expected" in one_error_line(run_cli(*args)) or "mark" in run_cli(*args).stderr


def test_render_endpoints_option_uses_the_same_checks() -> None:
    example = str(ROOT / "examples/ipvslb.yaml")
    for endpoints, expected in (("10.0.0.1:\u00b2", "has a bad port"),
                                ("127.0.0.1:6444", "proxy's port 6444")):
        res = run_cli("render", "-c", example, "--endpoints", endpoints, "--priority", "100")
        assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
        assert expected in res.stderr.splitlines()[0]


def test_notify_refuses_foreign_run_dir_and_odd_names(tmp_path: Path) -> None:
    res = run_cli("notify", "--run-dir", str(tmp_path), "INSTANCE", "ipvslb-vip-0", "MASTER")
    assert "is not a run directory ipvslb created" in one_error_line(res)
    assert not (tmp_path / "state-0").exists()
    files.claim_run_dir(tmp_path / "run")
    res = run_cli("notify", "--run-dir", str(tmp_path / "run"), "INSTANCE",
                  "ipvslb-vip-\u00b2", "MASTER")
    assert res.returncode == 0 and "Traceback" not in res.stderr
    state = tmp_path / "run" / "state-0"
    state.mkdir()  # a state "file" that is a directory
    res = run_cli("notify", "--run-dir", str(tmp_path / "run"), "INSTANCE", "ipvslb-vip-0",
                  "MASTER")
    assert "cannot record the state" in one_error_line(res)


def test_validate_keepalived_path_is_checked_by_up_before_any_change(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    run_dir = tmp_path / "run"
    cfg.write_text((ROOT / "examples/ipvslb.yaml").read_text().replace(
        "runDir: /run/ipvslb", f"runDir: {run_dir}\n  keepalivedPath: {tmp_path}\n  priority: 100"))
    line = one_error_line(run_cli("up", "-c", str(cfg)))
    assert f"node.keepalivedPath {tmp_path} is a directory" in line
    assert not run_dir.exists()
