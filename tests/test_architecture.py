"""The import graph of ``clad/`` runs one way: no loops, and no arrow against the layers.

Layers, from the bottom (imported by everything above) to the top (imports what it needs):

0. ``clad.errors`` (the user-facing errors) and ``clad.profiling`` (named timers).
1. records and mechanisms: ``clad.records``, ``clad.imageio``, ``clad.seeding``, ``clad.registry``
   (the registry imports nothing it registers), ``clad.progress`` (progress of long loops).
2. pure functions: ``clad.metrics``, ``clad.models.components``.
3. readers, detectors and outputs: ``clad.benchmarks``, ``clad.models``, ``clad.tracking``; none of
   the three imports another (they meet in the records).
4. ``clad.strategies``: they feed detectors, so they know the detector contract.
5. ``clad.config``: it composes the benchmarks' dataset block and validates detector and
   strategy parameters against the registered classes.
6. ``clad.runner``: the one loop; it owns everything below.
7. ``clad.sweeps``: grids of runs; ``clad.predict``: a trained run scoring new images, and its
   export.
8. ``clad.api`` (run, sweep, load_run) and ``clad.testing`` (the public contract checks).
9. ``clad.perf``, ``clad.cli``: entry points. 10. ``clad`` itself: the package re-exports the
   API (lazily, so ``import clad`` stays light).

A module may import a module of a lower layer, or one of its own package (the same group below).
Module-level, function-level and ``TYPE_CHECKING`` imports all count.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "clad"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("clad.errors", "clad.profiling"),
    ("clad.records", "clad.imageio", "clad.seeding", "clad.registry", "clad.progress"),
    ("clad.metrics", "clad.models.components"),
    ("clad.benchmarks", "clad.models", "clad.tracking"),
    ("clad.strategies",),
    ("clad.config",),
    ("clad.runner",),
    ("clad.sweeps", "clad.predict"),
    ("clad.api", "clad.testing"),
    ("clad.perf", "clad.cli"),
    ("clad",),
)

# Arrows that break the rule on purpose, each with its reason. Keep this short.
EXEMPT: dict[tuple[str, str], str] = {}


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The clad modules ``name`` imports (anywhere in the file)."""
    found = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[: len(package) - node.level + 1]
                base = ".".join(prefix + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def group_of(name: str) -> tuple[int, str]:
    """(layer, group): the longest layer entry that is ``name`` or a package above it."""
    best = None
    for layer, groups in enumerate(LAYERS):
        for group in groups:
            if name == group or (group != "clad" and name.startswith(group + ".")):
                if best is None or len(group) > len(best[1]):
                    best = (layer, group)
    assert best is not None, f"{name} is in no layer; add it to LAYERS"
    return best


def graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def back_arrows(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for source, targets in edges.items():
        layer, group = group_of(source)
        for target in targets:
            target_layer, target_group = group_of(target)
            allowed = target_layer < layer or target_group == group or target == "clad"
            if not allowed and (source, target) not in EXEMPT:
                wrong.append(
                    f"{source} (layer {layer}, {group}) imports {target} "
                    f"(layer {target_layer}, {target_group})"
                )
    return sorted(wrong)


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    for name in module_names():
        group_of(name)


def test_no_import_runs_against_the_layers():
    assert back_arrows(graph()) == []


def test_no_modules_import_each_other_in_a_loop():
    assert loops(graph()) == []


def test_the_checks_catch_a_back_arrow_and_a_loop():
    edges = {
        "clad.records": {"clad.runner"},
        "clad.runner": {"clad.records"},
        "clad.models.base": {"clad.benchmarks.stream"},
        "clad.benchmarks.stream": set(),
    }
    assert len(back_arrows(edges)) == 2
    assert loops(edges) == [["clad.records", "clad.runner"]]


def test_the_registry_imports_nothing_it_registers():
    edges = graph()
    assert not {
        t for t in edges["clad.registry"] if t.startswith(("clad.models", "clad.strategies"))
    }
