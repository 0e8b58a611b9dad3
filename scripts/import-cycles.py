#!/usr/bin/env python3
"""Import circles between dermsort's modules, read from the source (nothing is imported).

    python scripts/import-cycles.py [REPO] [--package train --package export ...] [--top-level-only]

Every ``import`` / ``from ... import`` of a dermsort module counts: at module level, inside a function
(a lazy import still ties two modules together) and under ``if TYPE_CHECKING:``. Each edge is tagged
with where it sits (``top``, ``local``, ``typing``). The package folders come from setup.cfg's
``package_dir`` (runtime/ is ``dermsort.runtime``, ...). Importing a submodule's parent package
implicitly is not counted; an explicit ``from . import x`` is an edge to ``x`` (a module) or to the
package's ``__init__``.

Prints each strongly connected group of modules with one shortest circle through each of its edges'
start, and exits 1 when a circle touches a selected package (all packages when none is selected).
"""

from __future__ import annotations

import argparse
import ast
import configparser
import sys
from collections import defaultdict, deque
from pathlib import Path

DEFAULT_PACKAGE_DIR = {"dermsort": "dermsort", "dermsort.runtime": "runtime",
                       "dermsort.runtime.backends": "runtime/backends", "dermsort.train": "train",
                       "dermsort.export": "export", "dermsort.bench": "bench"}


def package_dirs(repo: Path) -> dict[str, Path]:
    """dotted package -> its folder, from setup.cfg [options] package_dir (else the known layout)."""
    mapping = dict(DEFAULT_PACKAGE_DIR)
    cfg = repo / "setup.cfg"
    if cfg.is_file():
        parser = configparser.ConfigParser()
        parser.read(cfg)
        raw = parser.get("options", "package_dir", fallback="")
        pairs = [line.split("=", 1) for line in raw.splitlines() if "=" in line]
        if pairs:
            mapping = {k.strip(): v.strip() for k, v in pairs}
    return {name: repo / folder for name, folder in mapping.items() if (repo / folder).is_dir()}


def module_files(repo: Path) -> dict[str, Path]:
    """dotted module -> file, for every .py directly inside a package folder (``pkg`` for __init__)."""
    modules: dict[str, Path] = {}
    for package, folder in package_dirs(repo).items():
        for path in sorted(folder.glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _in_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """(import node, "top" | "local" | "typing") for every import in the module."""
    found: list[tuple[ast.AST, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, where))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, "typing" if where == "typing" else "local")
            elif isinstance(child, ast.If) and _in_type_checking(child):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "typing")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), where)
            else:
                visit(child, where)

    visit(tree, "top")
    return found


def dynamic_imports(repo: Path) -> list[str]:
    """``file:line call`` for each importlib.import_module / __import__ call: names chosen at run time
    (a registry loading its plugins by name) are not edges of the graph, so they are listed instead."""
    found = []
    for path in module_files(repo).values():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in ("import_module", "__import__"):
                    found.append(f"{path.relative_to(repo)}:{node.lineno} {ast.unparse(node)}")
    return found


def import_graph(repo: Path) -> dict[str, dict[str, set[str]]]:
    """module -> {imported module -> {where it is imported: top/local/typing}} (dermsort modules only)."""
    modules = module_files(repo)
    packages = set(package_dirs(repo))
    graph: dict[str, dict[str, set[str]]] = {m: defaultdict(set) for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = module if module in packages else module.rsplit(".", 1)[0]
        for node, where in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                for alias in node.names:
                    sub = f"{stem}.{alias.name}"
                    targets.append(sub if sub in modules else stem)
            for target in targets:
                # `import dermsort.train.data` names the module; a deeper name (attribute) falls back
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module][target].add(where)
    return graph


def strongly_connected(graph: dict[str, dict[str, set[str]]], kinds: set[str]) -> list[list[str]]:
    """Tarjan's groups of mutually reachable modules (only edges of the given kinds), each of 2+ modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def edges(node: str) -> list[str]:
        return sorted(t for t, w in graph[node].items() if w & kinds)

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges(node):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(groups)


def shortest_circle(graph: dict[str, dict[str, set[str]]], start: str, members: set[str], kinds: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one group."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node]):
            if target not in members or not graph[node][target] & kinds:
                continue
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
            if target not in previous:
                previous[target] = node
                queue.append(target)
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--package", action="append", default=[],
                        help="report circles touching this folder/package (train, export, bench, runtime/backends, ...)")
    parser.add_argument("--top-level-only", action="store_true",
                        help="count only module-level imports (the ones that fail at import time)")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    dirs = package_dirs(repo)
    folder_to_package = {str(p.relative_to(repo)): name for name, p in dirs.items()}
    selected = {folder_to_package.get(p.strip("/"), p) for p in args.package}
    kinds = {"top"} if args.top_level_only else {"top", "local", "typing"}
    graph = import_graph(repo)
    n_edges = sum(1 for m in graph for t, w in graph[m].items() if w & kinds)
    print(f"{repo}: {len(graph)} modules, {n_edges} import edges ({'/'.join(sorted(kinds))})")
    touching = 0
    for group in strongly_connected(graph, kinds):
        in_scope = not selected or any(m.rpartition(".")[0] in selected or m in selected for m in group)
        if not in_scope:
            continue
        touching += 1
        print(f"\ncircle group of {len(group)} modules: {', '.join(group)}")
        members, shown = set(group), set()
        for start in group:
            circle = shortest_circle(graph, start, members, kinds)
            key = frozenset(zip(circle, circle[1:]))
            if circle and key not in shown:
                shown.add(key)
                hops = [f"{a} -[{','.join(sorted(graph[a][b] & kinds))}]-> " for a, b in zip(circle, circle[1:])]
                print("  " + "".join(hops) + circle[-1])
    dynamic = dynamic_imports(repo)
    if dynamic:
        print(f"\n{len(dynamic)} run-time imports (module named at run time, not in the graph):")
        for line in dynamic:
            print("  " + line)
    print(f"\n{touching} circle group(s)" + (f" touching {', '.join(sorted(selected))}" if selected else ""))
    return 1 if touching else 0


if __name__ == "__main__":
    sys.exit(main())
