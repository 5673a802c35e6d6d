"""The rooms and the direction of imports (ARCHITECTURE.md), checked on the source.

Every project file is parsed (no import runs): each ``import`` / ``from … import`` of an
``xhub.*`` module, at any depth of the file, is an edge from the file's package to the
imported package. The rules below are the architecture; a new edge that breaks one, or a
cycle between two packages, fails here with the file and line that made it.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# folder -> the installed package it maps to (pyproject's package-dir)
ROOMS: dict[str, str] = {
    "proto/xhub": "xhub",
    "protocol": "xhub.protocol",
    "storage": "xhub.storage",
    "certificates_store": "xhub.certificates_store",
    "hub": "xhub.hub",
    "connectors": "xhub.connectors",
    "demo": "xhub.demo",
    "cli": "xhub.cli",
}

# Which room may import which (besides itself and the generated contract ``xhub.v1``).
ALLOWED: dict[str, set[str]] = {
    "xhub.protocol": set(),
    "xhub.storage": set(),
    "xhub.certificates_store": {"xhub.protocol", "xhub.storage"},
    "xhub.hub": {"xhub.protocol", "xhub.storage", "xhub.certificates_store"},
    "xhub.connectors": {"xhub.protocol", "xhub.storage", "xhub.certificates_store"},
    "xhub.demo": {
        "xhub.protocol",
        "xhub.storage",
        "xhub.certificates_store",
        "xhub.hub",
        "xhub.connectors",
    },
    "xhub.cli": {
        "xhub.protocol",
        "xhub.storage",
        "xhub.certificates_store",
        "xhub.hub",
        "xhub.connectors",
    },
}

# Server-side modules of the certificate library the SDK and connectors must not reach.
CONNECTORS_FORBIDDEN = ("xhub.certificates_store.store", "xhub.certificates_store.schema")

GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")
MAX_LINES = 600
OLD_TOP_LEVEL = {"hub", "connectors", "certificates_store", "protocol", "storage", "demo", "cli"}


@dataclass(frozen=True)
class Edge:
    source_file: str
    line: int
    importer: str  # module of the importing file
    imported: str  # the module named by the import


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    for folder, package in sorted(ROOMS.items(), key=lambda kv: -len(kv[0])):
        if rel.is_relative_to(folder):
            parts = list(rel.relative_to(folder).with_suffix("").parts)
            if parts and parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    raise ValueError(f"{rel} is in no room")


def project_files() -> Iterator[Path]:
    for folder in ROOMS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name.endswith(GENERATED_SUFFIXES) or "versions" in path.parts:
                continue
            yield path


def imports_in(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # ``from xhub.hub import db`` names a module too
                yield node.lineno, f"{node.module}.{alias.name}"


def known_packages() -> set[str]:
    packages = set()
    for path in project_files():
        if path.name == "__init__.py":
            packages.add(module_of(path))
    return packages


PACKAGES = known_packages()


def package_of(module: str) -> str:
    """The deepest project package that holds ``module``."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in PACKAGES:
            return candidate
    return parts[0]


def room_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def project_edges() -> list[Edge]:
    edges = []
    for path in project_files():
        importer = module_of(path)
        for line, imported in imports_in(path):
            if imported.split(".")[0] == "xhub":
                rel = str(path.relative_to(ROOT))
                edges.append(Edge(rel, line, importer, imported))
    return edges


EDGES = project_edges()


def test_rooms_import_only_downward() -> None:
    wrong = []
    for edge in EDGES:
        source, target = room_of(edge.importer), room_of(edge.imported)
        if target in {source, "xhub.v1", "xhub"} or source == "xhub":
            continue
        if target not in ALLOWED.get(source, set()):
            wrong.append(f"{edge.source_file}:{edge.line}: {source} must not import {target}")
    assert not wrong, "\n".join(wrong)


def test_connectors_never_reach_the_server_side_certificate_store() -> None:
    wrong = [
        f"{edge.source_file}:{edge.line}: imports {edge.imported}"
        for edge in EDGES
        if room_of(edge.importer) == "xhub.connectors"
        and edge.imported.startswith(CONNECTORS_FORBIDDEN)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for edge in EDGES:
        source, target = package_of(edge.importer), package_of(edge.imported)
        if source != target and target in PACKAGES:
            graph.setdefault(source, set()).add(target)
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles between packages: " + "; ".join(
        " <-> ".join(sorted(c)) for c in cycles
    )


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the components with more than one package."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("folder", ["tests", "bench", *ROOMS])
def test_nothing_imports_the_old_top_level_names(folder: str) -> None:
    wrong = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if path.name.endswith(GENERATED_SUFFIXES):
            continue
        for line, imported in imports_in(path):
            if imported.split(".")[0] in OLD_TOP_LEVEL:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: import {imported}")
    assert not wrong, "\n".join(wrong)


def test_every_package_folder_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    assert setuptools["package-dir"] == {package: folder for folder, package in ROOMS.items()}
    listed = set(setuptools["packages"])
    on_disk = {module_of(p) for p in ROOT.glob("**/__init__.py") if _in_a_room(p)}
    assert on_disk - listed == set(), "package folders missing from pyproject's packages"
    assert listed - on_disk == set(), "pyproject lists packages that have no folder"


def _in_a_room(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel.is_relative_to(folder) for folder in ROOMS) and ".venv" not in rel.parts


def test_no_project_file_is_too_long() -> None:
    long_files = []
    for folder in [*ROOMS, "tests", "bench"]:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name.endswith(GENERATED_SUFFIXES) or "versions" in path.parts:
                continue
            count = len(path.read_text(encoding="utf-8").splitlines())
            if count > MAX_LINES:
                long_files.append(f"{path.relative_to(ROOT)}: {count} lines")
    assert not long_files, f"files over {MAX_LINES} lines:\n" + "\n".join(long_files)
