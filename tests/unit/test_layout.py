"""The package layout's import rules, as each package's ``__init__`` docstring states them.

Data flows one way: config -> desired state (keepalived, ipvs, proxy backends) -> the system
(node). A module importing against that flow fails here, naming the import and the rule.
Imports under ``if TYPE_CHECKING:`` are for annotations only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ipvslb"
SHARED = {"errors", "logfmt", "files", "pyroute2_fixes"}  # modules every package may use
# package -> the ipvslb packages (besides itself and SHARED) it may import; None: any but cli
ALLOWED: dict[str, set[str] | None] = {
    "config": set(),
    "node": {"config"},
    "ipvs": {"node"},
    "endpoints": {"config"},
    "keepalived": {"config", "endpoints", "node"},
    "proxy": {"endpoints"},
    "status": {"config", "endpoints", "ipvs", "keepalived", "node", "proxy"},
    "agent": {"config", "endpoints", "ipvs", "keepalived", "node", "proxy", "status"},
    "lab": {"config", "keepalived", "node", "endpoints"},
    "cli": None,
    "__main__": {"cli"},
}


def _owner(module: str) -> str:
    """'ipvslb.node.vip' -> 'node'; 'ipvslb.errors' -> 'errors'; 'ipvslb' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported ipvslb module) for every runtime import in ``path``."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.startswith("ipvslb"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ipvslb":  # from ipvslb import x: x is a module (or __version__)
                found.extend((node.lineno, f"ipvslb.{a.name}") for a in node.names)
            elif node.module.startswith("ipvslb."):
                found.append((node.lineno, node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def violations(path: Path, rel: Path | None = None) -> list[str]:
    """What ``path`` (``rel``: its path from the checkout, e.g. ipvslb/node/vip.py) imports
    against the rules."""
    rel = rel or path.relative_to(PACKAGE.parent)
    owner = _owner(".".join(rel.with_suffix("").parts))
    if owner == "__init__":
        owner = ""
    allowed = SHARED | {owner, "__version__"}
    rule = ALLOWED.get(owner, set())  # the shared modules may import only each other
    out = []
    for line, module in imports(path):
        target = _owner(module)
        if target in allowed or target == "":
            continue
        if rule is None and target != "cli" or rule is not None and target in rule:
            continue
        out.append(f"{rel}:{line} imports {module}, which {owner or 'ipvslb'} must not import")
    return out


def test_every_package_documents_what_it_owns() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(PACKAGE.parent)} needs a docstring saying what it owns"


def test_every_ipvslb_package_has_a_rule() -> None:
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages <= set(ALLOWED), f"add an import rule for {packages - set(ALLOWED)}"


def test_imports_follow_the_data_flow() -> None:
    problems = [v for path in modules() for v in violations(path)]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The rule check itself: a config module importing the node is reported; the same kind
    of import under TYPE_CHECKING is not, nor one the rules allow."""
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nfrom ipvslb.node import vip\n"
                     "from ipvslb import errors\nfrom ipvslb.config.model import Config\n"
                     "if TYPE_CHECKING:\n    from ipvslb.agent import Agent\n")
    assert violations(probe, Path("ipvslb/config/probe.py")) == [
        "ipvslb/config/probe.py:2 imports ipvslb.node, which config must not import"]
    assert violations(probe, Path("ipvslb/keepalived/probe.py")) == []
    assert violations(probe, Path("ipvslb/cli/probe.py")) == []
    assert violations(probe, Path("ipvslb/errors.py")) == [
        "ipvslb/errors.py:2 imports ipvslb.node, which errors must not import",
        "ipvslb/errors.py:4 imports ipvslb.config.model, which errors must not import"]


def test_keepalived_conf_knows_nothing_of_ipvslb() -> None:
    """keepalived_conf/ models keepalived's language; it must stay usable on its own."""
    for path in sorted((PACKAGE.parent / "keepalived_conf").rglob("*.py")):
        assert not imports(path), f"{path} imports ipvslb"
