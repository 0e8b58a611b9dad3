#!/usr/bin/env python3
"""Lines per file and the longest functions of some package folders, read from the source.

    python scripts/code-size.py [REPO] [--top 10] [FOLDER ...]     (folders default: train export bench)

Lines are physical lines of each .py file; a function's length is ``end_lineno - lineno + 1`` of its
``def`` (decorators excluded, nested functions counted inside their parent and listed on their own).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("folders", nargs="*", default=["train", "export", "bench"])
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    repo = Path(args.repo)
    functions: list[tuple[int, str]] = []
    for folder in args.folders:
        total = 0
        print(f"## {folder}/")
        for path in sorted((repo / folder).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            n = len(text.splitlines())
            total += n
            print(f"{n:6d}  {path.relative_to(repo)}")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions.append((node.end_lineno - node.lineno + 1,
                                      f"{path.relative_to(repo)}:{node.lineno} {node.name}"))
        print(f"{total:6d}  total {folder}/\n")
    print(f"## longest functions ({', '.join(args.folders)})")
    for length, name in sorted(functions, key=lambda f: (-f[0], f[1]))[:args.top]:
        print(f"{length:6d}  {name}")


if __name__ == "__main__":
    main()
