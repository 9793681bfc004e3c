"""The one YAML reader for files a user hands ipvslb: bounded, strict, one-line errors.

PyYAML's ``safe_load`` builds whatever the text describes: anchors and aliases let a few
hundred bytes describe billions of nodes (each later walk of the result takes forever), deep
nesting ends in a RecursionError, and a repeated key silently keeps the last value. This reader
refuses each of those before any of the document is used:

- files larger than MAX_BYTES;
- documents that expand (aliases counted as copies) to more than MAX_NODES nodes;
- nesting deeper than MAX_DEPTH;
- a key that appears twice in one mapping (the second would silently win);
- anything that is not valid YAML, or not UTF-8 text.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ipvslb.errors import UserError

MAX_BYTES = 1024 * 1024  # a config of ipvslb or k0s is a few KiB
MAX_NODES = 100_000  # after expanding aliases
MAX_DEPTH = 64
MAX_INT_CHARS = 40  # more digits than any port, mark, label or number of seconds needs


class _Refused(Exception):
    def __init__(self, message: str, node: Node | None = None) -> None:
        super().__init__(message)
        self.node = node


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that measures the composed document before constructing it."""

    def construct_document(self, node: Node) -> Any:
        _check(node)
        return super().construct_document(node)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """A tagged scalar that does not convert (``!!int abc``, ``!!bool maybe``) is refused
        in one line instead of escaping as a ValueError/KeyError traceback."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, KeyError, TypeError, OverflowError) as err:
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise _Refused(f"{tag} value does not convert ({err})"[:200], node) from None

    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(str(node.value)) > MAX_INT_CHARS:
            raise _Refused(f"an integer of {len(node.value)} characters; no field takes such a "
                           "number", node)
        return super().construct_yaml_int(node)  # type: ignore[no-any-return]


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
# Date-like scalars stay strings, as Go's YAML (k0s) reads them: no field takes a date, and
# PyYAML raised a ValueError traceback on "2024-13-45".
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _check(root: Node) -> None:
    """Expanded size, depth and duplicate keys of the node graph (aliases are shared nodes:
    memoised, so even a "billion laughs" document is measured in linear time)."""
    sizes: dict[int, int] = {}
    checked: set[int] = set()

    def size(node: Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", node)
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
                if total > MAX_NODES:
                    break
        elif isinstance(node, MappingNode):
            if id(node) not in checked:
                checked.add(id(node))
                seen: set[str] = set()
                for key, _ in node.value:
                    if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                        if key.value in seen:
                            raise _Refused(f"key {key.value!r} appears twice in one mapping "
                                           "(the second would silently win); keep one", key)
                        seen.add(key.value)
            for key, value in node.value:
                total += size(key, depth + 1) + size(value, depth + 1)
                if total > MAX_NODES:
                    break
        if total > MAX_NODES:
            raise _Refused(f"expands to more than {MAX_NODES:,} nodes (anchors and aliases "
                           "counted as copies)", node)
        sizes[id(node)] = total
        return total

    size(root, 0)


def _where(node: Node | None) -> str:
    mark = getattr(node, "start_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def parse(text: str, name: str) -> Any:
    """The document in ``text`` (from ``name``, for messages); UserError if refused."""
    if len(text) > MAX_BYTES:
        raise UserError(f"{name}: larger than {MAX_BYTES // 1024} KiB; a config is a few KiB, "
                        "pass the right file")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as err:
        raise UserError(f"{name}: refused{_where(err.node)}: {err}") from None
    except RecursionError:
        raise UserError(f"{name}: refused: nested too deeply (more than {MAX_DEPTH} levels); "
                        "fix the file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"{name}: not valid YAML{where}: {problem}; fix the syntax") from None


def read(path: str | Path, what: str = "pass a readable YAML file with -c",
         kind: str = "") -> Any:
    """Read and parse the YAML file at ``path``; one-line UserError naming the fix
    (``what``) when it is missing, unreadable, too large, not text or refused. ``kind``
    names the file in "no such <kind> file"."""
    file = Path(path)
    try:
        info = file.stat()
        if not stat.S_ISREG(info.st_mode):
            # a FIFO or a device would block or never end; a directory cannot be read
            kind_of = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise UserError(f"{file}: cannot read it (it is {kind_of}); {what}")
        if info.st_size > MAX_BYTES:
            raise UserError(f"{file}: larger than {MAX_BYTES // 1024} KiB; a config is a few "
                            f"KiB, {what}")
        with file.open("rb") as stream:
            data = stream.read(MAX_BYTES + 1)  # a growing or special file: read no more
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{file}: no such {kind + ' ' if kind else ''}file; {what}") from None
    except (IsADirectoryError, PermissionError, OSError) as err:
        raise UserError(f"{file}: cannot read it ({err.__class__.__name__}); {what}") from None
    except UnicodeDecodeError:
        raise UserError(f"{file}: not UTF-8 text (a binary file?); {what}") from None
    if "\x00" in text:
        raise UserError(f"{file}: not text (it holds NUL bytes); {what}")
    return parse(text, str(file))
