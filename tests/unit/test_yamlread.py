"""The one bounded YAML reader (ipvslb.config.yamlread) and the commands that use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipvslb.config import formats, yamlread
from ipvslb.errors import UserError

LAUGHS = "\n".join(
    ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)])


def refused(text: str) -> str:
    with pytest.raises(UserError) as err:
        yamlread.parse(text, "f.yaml")
    assert "\n" not in err.value.message
    return err.value.message


def test_a_repeated_key_is_refused_with_its_name_and_line() -> None:
    message = refused("node:\n  role: controller\n  role: controller+worker\n")
    assert "key 'role' appears twice" in message and "line 3" in message


def test_a_repeated_top_level_section_is_refused() -> None:
    # the case seen: a second controlPlaneLoadBalancing silently changed the VIP
    doc = ("controlPlaneLoadBalancing:\n  enabled: true\n"
           "controlPlaneLoadBalancing:\n  enabled: false\n")
    assert "controlPlaneLoadBalancing" in refused(doc)


def test_merge_keys_and_small_anchors_still_work() -> None:
    doc = yamlread.parse("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\nlist: [*b, *b]\n", "f")
    assert doc["other"] == {"x": 1, "y": 2} and doc["list"] == [{"x": 1}, {"x": 1}]


def test_billion_laughs_is_refused_before_anything_walks_it() -> None:
    assert "expands to more than" in refused(LAUGHS)


def test_billion_laughs_through_the_cli_ends_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS.replace("a9:", "controlPlaneLoadBalancing:"))
    # bounded: without the reader's limit this ran past 20 s (issue 17)
    done = subprocess.run([sys.executable, "-m", "ipvslb", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "expands to more than" in done.stderr


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "a:\n" + "".join(
    " " * i + f"k{i}:\n" for i in range(1, 400)) + " " * 400 + "v: 1\n"])
def test_deep_nesting_is_refused_not_a_traceback(text: str) -> None:
    assert "nest" in refused(text)


def test_files_are_bounded_in_size_and_must_be_text(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (yamlread.MAX_BYTES // 10 + 10))
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"a: 1\n\x00\n")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x81\x00garbage")
    for path, words in ((big, "larger than"), (nul, "NUL"), (binary, "not UTF-8"),
                        (tmp_path, "cannot read"), (tmp_path / "none.yaml", "no such file")):
        with pytest.raises(UserError, match=words):
            formats.load(path)


def test_other_readers_refuse_repeated_keys_too(tmp_path: Path) -> None:
    from ipvslb.endpoints import kubeconfig
    from ipvslb.lab.topology import Topology

    path = tmp_path / "t.yaml"
    path.write_text("name: a\nname: b\n")
    with pytest.raises(UserError, match="appears twice"):
        Topology.load(path)
    with pytest.raises(UserError, match="appears twice"):
        kubeconfig._check_file(str(path), "test")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_in_one_line(text: str) -> None:
    try:
        yamlread.parse(text, "f.yaml")
    except UserError as err:
        assert "\n" not in err.message
