"""The package's modules import each other without a loop: every import statement counts,
including those inside functions and under `if TYPE_CHECKING:` (a loop hidden that way is
still a loop in the design). A module's dependencies point one way: from the adapters down
to the queue core, never back."""
from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
PACKAGE = "tether"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Every tether module `name` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    found.add(sub)          # `from . import protocol`: the submodule
                elif target in known:
                    found.add(target)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_init_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # A package's __init__ re-exporting its submodules is how Python packages work, and
    # importing `from .core import X` goes through it: drop the edge from a package to its
    # own submodules, keep everything else.
    return {name: {d for d in deps if not d.startswith(name + ".")} for name, deps in graph.items()}


def test_no_import_cycles_in_tether():
    cycles = _cycles(_package_init_edges(_graph()))
    assert not cycles, "modules that import each other in a loop: " + "; ".join(" <-> ".join(c) for c in cycles)


# Engines are sans-IO: bytes, requests and a `now` in; bytes, records, events and deadlines
# out. Each may import only itself and the layers below it, and nothing that does I/O or
# reads a clock (os.urandom for secrets is allowed in the session engine: keys, not I/O).
SANS_IO = {
    "tether.queue.core": (("tether.queue.core",), {"asyncio", "time", "os", "socket", "threading", "uvloop"}),
    "tether.session.sansio": (("tether.session.sansio",), {"asyncio", "time", "socket", "threading", "uvloop",
                                                          "selectors", "ssl"}),
}
LAYERS_BELOW = ("tether.errors", "tether.layer1", "tether._native", "tether._reference")


@pytest.mark.parametrize("package", sorted(SANS_IO))
def test_a_sans_io_engine_imports_no_adapter_and_no_io(package):
    own, forbidden = SANS_IO[package]
    graph = _graph()
    modules = [name for name in graph if name == package or name.startswith(package + ".")]
    assert modules
    for name in modules:
        for dep in graph[name]:
            assert dep.startswith(own + LAYERS_BELOW), f"{name} imports {dep}"
        tree = ast.parse(_modules()[name].read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and not node.level}
        assert not imported & forbidden, f"{name} reaches for I/O or a clock: {sorted(imported & forbidden)}"
        # metrics are read from the engines' counts by tether.metrics, never pushed from them
        assert "prometheus_client" not in imported, f"{name} imports prometheus_client"


@pytest.mark.parametrize("module, forbidden", [
    ("tether.queue.client", "tether.queue.manager"),
    ("tether.queue.service", "tether.queue.manager"),
    ("tether.queue.connection", "tether.queue.service"),
    ("tether.queue.forwarder", "tether.queue.manager"),
    ("tether.queue.transaction", "tether.queue.manager"),
    ("tether.queue.cli_tools", "tether.cli"),
    ("tether.session.sansio.engine", "tether.session.adapters.session"),
])
def test_adapters_do_not_reach_upward(module, forbidden):
    assert forbidden not in _graph()[module]


def test_only_tether_metrics_imports_prometheus_client():
    importers = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m.split(".")[0] == "prometheus_client" for m in modules):
                importers.append(name)
    assert sorted(set(importers)) == ["tether.metrics"]


def test_the_check_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
