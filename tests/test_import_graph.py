"""The shape of the code, read from its imports: no cycles, core at the bottom, and services
reached only through their public interface modules (docs/architecture.md, "Imports").

Every import counts, also one inside a function or under TYPE_CHECKING: a lazy import hides a
cycle from Python but not from a reader.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src"
ROOT = "caduceus"

# The pipeline's stages. Each talks to the others through the database; what another part
# may ask of it directly is in its `interface` module, the only one anybody else imports.
SERVICES = ("receiver", "router", "processor", "dispatcher", "cleaner", "notifier", "bookkeeper")
# The bottom layer: it imports nothing of these (nor of the services).
ABOVE_CORE = ("cli", "web", "supervisor", "selftest")
# What starts a service (`caduceus receiver`, ...): cli/main.py runs each one's serve().
ENTRY_POINTS = {f"{ROOT}.{name}.service" for name in SERVICES} | {f"{ROOT}.receiver.server"}
# The bookkeeper is the history's query side: it runs in no process of its own, and every
# module of it is a query for the web and the command line, so the parts above the services
# (web, CLI, self-test) may use any of it; the services may not.
READ_SIDE = f"{ROOT}.bookkeeper"

# Edges allowed until the change that removes them lands; delete each with it. An exception
# that is no longer needed fails test_exceptions_are_still_needed, so the list only shrinks.
EXCEPTIONS: set[tuple[str, str]] = set()

Edges = dict[tuple[str, str], str]  # (importer, imported) -> where: "path:line"


def modules(source: Path = SOURCE) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its __init__.py)."""
    found = {}
    for path in sorted((source / ROOT).rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, package: str, known: set[str]) -> list[str]:
    """The modules of ours that an import statement names: `from a import b` names module
    a.b when there is one, else module a (b is a name defined in it)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        origin = ".".join([*base, node.module] if node.module else base)
    else:
        origin = node.module or ""
    return [
        f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
        for alias in node.names
    ]


def _deepest_known(name: str, known: set[str]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(found: dict[str, Path]) -> Edges:
    known = set(found)
    edges: Edges = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _imported(node, package, known):
                imported = _deepest_known(target, known)
                if imported is not None and imported != name:
                    where = f"{path.relative_to(SOURCE.parent)}:{node.lineno}"
                    edges.setdefault((name, imported), where)
    return edges


def cycles(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (Tarjan's algorithm): each is a set
    of nodes that import one another, directly or round about."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in pairs:
        graph[a].add(b)
        graph[b]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(graph[node]):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def sibling_edges(edges: Edges) -> set[tuple[str, str]]:
    """Imports between the children of one package, at every depth: caduceus.web ->
    caduceus.core for caduceus.web.api.tasks -> caduceus.core.db.models, caduceus.web.api ->
    caduceus.web.pages for caduceus.web.api.x -> caduceus.web.pages.y, and so on."""
    found = set()
    for a, b in edges:
        left, right = a.split("."), b.split(".")
        depth = 0
        while depth < min(len(left), len(right)) and left[depth] == right[depth]:
            depth += 1
        if depth < len(left) and depth < len(right):  # not a package and its own module
            found.add((".".join(left[: depth + 1]), ".".join(right[: depth + 1])))
    return found


def part_of(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def service_of(module: str) -> str | None:
    return next((s for s in SERVICES if part_of(module, f"{ROOT}.{s}")), None)


def forbidden(edges: Edges) -> list[str]:
    """The imports the layering forbids, each as "where: importer -> imported (why)"."""
    wrong = []
    for (importer, imported), where in sorted(edges.items()):
        why = _why_forbidden(importer, imported)
        if why and (importer, imported) not in EXCEPTIONS:
            wrong.append(f"{where}: {importer} -> {imported} ({why})")
    return wrong


def _why_forbidden(importer: str, imported: str) -> str | None:
    if part_of(importer, f"{ROOT}.core"):
        above = [f"{ROOT}.{name}" for name in (*SERVICES, *ABOVE_CORE)]
        if any(part_of(imported, package) for package in above):
            return "core imports nothing above it"
        return None
    service = service_of(imported)
    if service is None or service == service_of(importer):
        return None
    if imported == f"{ROOT}.{service}.interface":
        return None
    if importer == f"{ROOT}.cli.main" and imported in ENTRY_POINTS:
        return None
    if part_of(imported, READ_SIDE) and service_of(importer) is None:
        return None
    return f"only {ROOT}.{service}.interface may be imported from outside the {service}"


@pytest.fixture(scope="module")
def edges() -> Edges:
    return import_edges(modules())


def test_the_graph_is_read(edges: Edges) -> None:
    # A reader that finds nothing would pass every test below.
    assert ("caduceus.cli.main", "caduceus.cli.settings") in edges
    assert ("caduceus.web.api.tasks", "caduceus.dispatcher.interface") in edges
    assert len(edges) > 500


def _listed(lines: Iterable[object]) -> str:
    return "\n" + "\n".join(str(line) for line in lines)


def test_no_module_imports_in_a_cycle(edges: Edges) -> None:
    found = cycles(edges)
    assert not found, "modules that import one another:" + _listed(found)


def test_no_package_imports_in_a_cycle(edges: Edges) -> None:
    found = cycles(sibling_edges(edges))
    assert not found, "packages that import one another:" + _listed(found)


def test_core_and_services_are_imported_only_as_allowed(edges: Edges) -> None:
    wrong = forbidden(edges)
    assert not wrong, "imports the layering forbids:" + _listed(wrong)


def test_exceptions_are_still_needed(edges: Edges) -> None:
    stale = sorted(EXCEPTIONS - set(edges))
    assert not stale, "exceptions no import needs any more (delete them):" + _listed(stale)


def test_a_forbidden_edge_and_a_cycle_are_found() -> None:
    made = {
        ("caduceus.core.storage", "caduceus.web.app"): "a:1",
        ("caduceus.web.api.tasks", "caduceus.dispatcher.dispatch"): "b:2",
        ("caduceus.router.completion", "caduceus.dispatcher.interface"): "c:3",
        ("caduceus.bookkeeper.search", "caduceus.cleaner.cleaning"): "d:4",
    }
    assert forbidden(made) == [
        "d:4: caduceus.bookkeeper.search -> caduceus.cleaner.cleaning "
        "(only caduceus.cleaner.interface may be imported from outside the cleaner)",
        "a:1: caduceus.core.storage -> caduceus.web.app (core imports nothing above it)",
        "b:2: caduceus.web.api.tasks -> caduceus.dispatcher.dispatch "
        "(only caduceus.dispatcher.interface may be imported from outside the dispatcher)",
    ]
    assert cycles([("a.x", "b.y"), ("b.y", "c"), ("c", "a.x"), ("c", "d")]) == [["a.x", "b.y", "c"]]
    assert cycles(sibling_edges({("p.a.x", "p.b.y"): "", ("p.b.z", "p.a.w"): ""})) == [
        ["p.a", "p.b"]
    ]
