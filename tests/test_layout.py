"""The package layout keeps its promises, read from the source with `ast` (nothing imported).

- groundstation.core is pure: no asyncio, sockets or MQTT, and none of the edges (ingest,
  consumers, service, cli, the daemon); it may use groundstation.errors.
- Importing a module never runs into an import cycle.
- The ground station uses the simulator only in the demo, and only once the demo runs.
- pyproject installs every package folder, and mypy's links match its package-dir.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
PYPROJECT: Final = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Installed package name -> repository folder, as pyproject maps them.
PACKAGE_DIRS: Final[dict[str, str]] = {
    "groundstation": "groundstation",
    **PYPROJECT["tool"]["setuptools"]["package-dir"],
}
FORBIDDEN_IN_CORE: Final = frozenset(
    {"asyncio", "socket", "aiomqtt", "paho", "amqtt", "prometheus_client"}
)
ALLOWED_IN_CORE: Final = ("groundstation.core", "groundstation.errors")
DEMO: Final = "groundstation.cli.demo"


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by its import name."""
    modules: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            modules.setdefault(name, path)
    return modules


MODULES: Final = _modules()
CORE: Final = sorted(name for name in MODULES if name.startswith("groundstation.core."))


def _imports(name: str, *, module_level_only: bool) -> Iterator[tuple[str, int]]:
    """(imported module, line) for each import in a module; `from pkg import name` counts
    as importing pkg.name when that is a module. Module level leaves out imports inside
    functions and under `if TYPE_CHECKING:`, which do not run when the module loads."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _walk(tree, module_level_only=module_level_only):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base, node.lineno
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    yield f"{base}.{alias.name}", node.lineno


def _walk(node: ast.AST, *, module_level_only: bool) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if module_level_only and isinstance(
            child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        ):
            continue
        if module_level_only and isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _walk(other, module_level_only=module_level_only)
            continue
        yield child
        yield from _walk(child, module_level_only=module_level_only)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _internal(imported: str) -> str | None:
    """The package module an import loads, or None for anything outside the package."""
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


def test_the_layout_is_found() -> None:
    assert "groundstation.core.decoder" in CORE
    assert "groundstation.simulators.run" in MODULES
    assert "groundstation.protocols" in MODULES


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_edge(module: str) -> None:
    """Anywhere in the module, functions included: the core never reaches the edges."""
    wrong = [
        f"line {line}: {imported}"
        for imported, line in _imports(module, module_level_only=False)
        if not _allowed_in_core(imported)
    ]
    assert not wrong, f"{MODULES[module].relative_to(ROOT)} imports {wrong}"


def _allowed_in_core(imported: str) -> bool:
    top = imported.partition(".")[0]
    if top in FORBIDDEN_IN_CORE:
        return False
    if top != "groundstation" or imported == "groundstation":  # the root: __version__
        return True
    return any(imported == a or imported.startswith(f"{a}.") for a in ALLOWED_IN_CORE)


def test_no_import_cycle() -> None:
    """Module-level imports between the package's modules (a package's __init__ included:
    importing a.b.c runs a and a.b first) form no cycle."""
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        targets: set[str] = set()
        for imported, _ in _imports(name, module_level_only=True):
            target = _internal(imported)
            while target:
                targets.add(target)
                target = target.rpartition(".")[0] if "." in target else ""
        targets.discard(name)
        graph[name] = {t for t in targets if not name.startswith(f"{t}.")}
    assert _cycles(graph) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_ground_station_loads_the_simulator_only_in_the_demo() -> None:
    simulator = "groundstation.simulators"
    module_level = []
    in_functions = []
    for name in MODULES:
        if name == simulator or name.startswith(f"{simulator}."):
            continue
        everywhere = {
            (i, line) for i, line in _imports(name, module_level_only=False) if _is_sim(i)
        }
        at_load = {(i, line) for i, line in _imports(name, module_level_only=True) if _is_sim(i)}
        module_level += [f"{name} line {line}" for _, line in sorted(at_load)]
        in_functions += [name for _ in everywhere - at_load]
    assert module_level == []
    assert set(in_functions) == {DEMO}


def _is_sim(imported: str) -> bool:
    return imported == "groundstation.simulators" or imported.startswith(
        "groundstation.simulators."
    )


def test_pyproject_installs_every_package_folder() -> None:
    """setuptools is given the package list (package-dir maps two of them), so a new
    subpackage missing from it would silently be left out of the wheel."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert listed == folders


def test_mypy_sees_the_mapped_packages_under_their_installed_names() -> None:
    """mypy has no package-dir: typecheck/ links each mapped package's installed path to
    its folder, and mypy checks them there."""
    mypy = PYPROJECT["tool"]["mypy"]
    view = ROOT / mypy["mypy_path"]
    for package, folder in PACKAGE_DIRS.items():
        if package == "groundstation":
            continue
        link = view.joinpath(*package.split("."))
        assert link.is_symlink(), link
        assert link.resolve() == (ROOT / folder).resolve()
        assert str(link.relative_to(ROOT)) in mypy["files"]
