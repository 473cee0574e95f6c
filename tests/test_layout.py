"""The code layout: no import cycle among modules, no module over 500 lines.

Imports are read with `ast` (nothing is imported): every `import` and `from ... import` in a module,
at module level or inside a function, except under `if TYPE_CHECKING:`, is an edge to the module it
names (`from pkg import name` names `pkg.name` when that is a module, else `pkg`). A function-level
import is still a dependency, so it counts: a cycle hidden inside a function is a cycle.
The experiment scripts run with experiments/ on sys.path, so their modules are named from there
(`lib.measure`, `run_all`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Package roots whose modules are named from the repository root, and folders on sys.path of their own.
PACKAGES = ("sam", "probes")
SCRIPT_ROOTS = ("experiments",)
SIZE_CHECKED = ("sam", "probes", "experiments", "tests", "benchmarks")
MAX_LINES = 500


def module_files() -> dict[str, Path]:
    """Module name -> file, for every module of the packages and the experiment folder."""
    out: dict[str, Path] = {}
    for root, base in [(REPO / p, REPO) for p in PACKAGES] + [(REPO / s, REPO / s) for s in SCRIPT_ROOTS]:
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (annotations only: not a runtime dependency)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The known modules that module `name` (at `path`) imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def known(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        else:
            continue
        for t in targets:
            m = known(t)
            if m and m != name:
                found.add(m)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {name: imports_of(name, path, names) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if colour.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if node not in colour:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_sees_the_imports_it_should() -> None:
    """The walker itself: known edges of the layout are found (else an empty graph would pass)."""
    graph = import_graph()
    assert "sam.model.lm_formats" in graph["sam.model.lm"]
    assert "sam.config.schema" in graph["sam.config.presets"]
    assert "probes.state.closed_form" in graph["probes.state.triton_path"]
    assert "lib.common" in graph["table_main"]


def test_a_cycle_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("folder", SIZE_CHECKED)
def test_no_module_over_500_lines(folder: str) -> None:
    long = {
        str(p.relative_to(REPO)): n for p in sorted((REPO / folder).rglob("*.py")) if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_readme_is_one_screenful_per_topic() -> None:
    """README.md: at most 200 lines, no table cell over 400 characters (details live in docs/)."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines"
    cells = [c.strip() for line in lines if line.startswith("|") for c in line.strip().strip("|").split("|")]
    assert max(map(len, cells)) <= 400, f"a README table cell has {max(map(len, cells))} characters"
