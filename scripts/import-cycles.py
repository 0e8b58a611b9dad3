#!/usr/bin/env python3
"""Print the import cycles among the modules of one package folder (default: runtime/).

    python3 scripts/import-cycles.py                 # runtime/
    python3 scripts/import-cycles.py runtime train export bench

Reads the code only (``ast``; nothing is imported or run). Every ``import``/``from ... import`` counts,
inside functions and under ``if TYPE_CHECKING:`` too: a type-only import still ties the two files together
for a reader. Only imports between modules of the same folder (subfolders included) are followed; a
``from . import name`` counts as an import of ``name`` when it is a module of that folder. Exit status 1 when
any folder has a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_name(folder: Path, path: Path) -> str:
    rel = path.relative_to(folder).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(folder: Path, path: Path, modules: set[str]) -> set[str]:
    """The modules of ``folder`` that ``path`` imports (relative imports, and absolute ones through the package)."""
    here = module_name(folder, path).split(".") if module_name(folder, path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:  # dermsort.<folder>.x
                mod = node.module or ""
                prefix = f"dermsort.{folder.name}"
                if mod != prefix and not mod.startswith(prefix + "."):
                    continue
                stem = mod[len(prefix) + 1:]
            targets.append(stem)
            targets += [f"{stem}.{a.name}" if stem else a.name for a in node.names]
        elif isinstance(node, ast.Import):
            prefix = f"dermsort.{folder.name}."
            targets += [a.name[len(prefix):] for a in node.names if a.name.startswith(prefix)]
        for target in targets:
            if target in modules and target != module_name(folder, path):
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def report(folder: Path) -> int:
    files = sorted(folder.rglob("*.py"))
    modules = {module_name(folder, p) for p in files} - {""}
    graph = {module_name(folder, p): imports(folder, p, modules) for p in files if module_name(folder, p)}
    edges = sum(len(v) for v in graph.values())
    found = cycles(graph)
    print(f"{folder.name}/: {len(graph)} modules, {edges} imports between them, {len(found)} cycle(s)")
    for component in found:
        inner = {m: sorted(graph[m] & set(component)) for m in component}
        print("  cycle: " + ", ".join(component))
        for m, targets in inner.items():
            print(f"    {m} -> {', '.join(targets)}")
    return len(found)


def main(argv: list[str]) -> int:
    folders = [Path(a) if Path(a).is_absolute() else Path.cwd() / a for a in argv] or [REPO / "runtime"]
    total = 0
    for folder in folders:
        if not folder.is_dir():
            print(f"{folder}: not a folder", file=sys.stderr)
            return 2
        total += report(folder.resolve())
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
