"""The shape of the package: imports flow one way (no circle, the library never imports a CLI, the
sampling/evaluation CLIs never import the training loop), modules stay small, and the README's picture
of the code names every module."""

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "mindiff"
CLIS = {"train", "sample", "evaluate", "reconstruct", "compare", "bench"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set:
    """mindiff modules that `name` imports anywhere in its file (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in MODULES and m != "mindiff" and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def reachable(start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_import_graph_has_no_circle():
    circles = sorted(name for name in GRAPH if name in reachable(name))
    assert not circles, f"modules on an import circle: {circles}"


def test_the_library_never_imports_a_cli():
    for name, deps in GRAPH.items():
        if name.split(".")[-1] not in CLIS:
            assert not {d for d in deps if d.split(".")[-1] in CLIS}, f"{name} imports a CLI"


def test_sampling_and_scoring_clis_do_not_import_the_training_loop():
    for cli in ("sample", "evaluate", "reconstruct", "compare"):
        assert "mindiff.trainer" not in reachable(f"mindiff.{cli}"), f"mindiff.{cli} imports the training loop"


def test_no_module_is_long():
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 260}
    assert not long, f"modules over ~250 lines (split them by concern): {long}"


def test_the_readme_names_every_module():
    layout = re.search(r"## The code\n(.*?)\n## |\Z", (REPO / "README.md").read_text() + "\n## ", re.S).group(1)
    missing = [name for name, p in MODULES.items() if p.stem != "__init__" and p.name not in layout]
    assert not missing, f"README's 'The code' section does not name {missing}"
