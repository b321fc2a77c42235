"""The emulator's module structure: no import cycles, nothing from the connector.

Read from the source with `ast`, so that imports under `TYPE_CHECKING` count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sfstream_emulator

ROOT = "sfstream_emulator"
PACKAGE_DIR = Path(sfstream_emulator.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement of `path`, and `from m import n` as m.n."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the emulator modules it imports.

    Importing `a.b.c` also runs the package `a.b`, so subpackages count as imported. The
    root package is the public facade that re-exports `Emulator`; every module runs it, so
    only explicit imports of it count.
    """
    sources = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        targets: set[str] = set()
        for imported in _imports(path):
            if imported in sources:
                targets.add(imported)
            parts = imported.split(".")
            for length in range(2, len(parts)):
                parent = ".".join(parts[:length])
                if parent in sources:
                    targets.add(parent)
        targets.discard(name)
        # A package's own modules run it before themselves: not an import back.
        graph[name] = {t for t in targets if not name.startswith(f"{t}.")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_graph_sees_the_modules() -> None:
    graph = _graph()
    assert {"sfstream_emulator.server", "sfstream_emulator.control"} <= set(graph)
    assert "sfstream_emulator.rest.common" in graph["sfstream_emulator.rest.query"]
    assert "sfstream_emulator.control" in graph["sfstream_emulator.server"]


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert _cycles(_graph()) == []


def test_control_does_not_import_the_server() -> None:
    assert "sfstream_emulator.server" not in _graph()["sfstream_emulator.control"]


def test_nothing_comes_from_the_connector() -> None:
    for path in PACKAGE_DIR.rglob("*.py"):
        connector = {
            name for name in _imports(path) if name == "sfstream" or name.startswith("sfstream.")
        }
        assert connector == set(), path


def test_rest_modules_stay_small() -> None:
    for path in (PACKAGE_DIR / "rest").glob("*.py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 400, f"{path.name} has {lines} lines"
