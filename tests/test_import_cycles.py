"""No import circles anywhere in the package: runtime/ (the sorter, journal, placement and recovery included), train/,
export/, bench/ (scripts/import-cycles.py, read from source)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("import_cycles", REPO / "scripts" / "import-cycles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circle_in_any_part(capsys):
    assert _script().main([str(REPO), "--package", "train", "--package", "export", "--package", "bench",
                           "--package", "runtime"]) == 0, capsys.readouterr().out


def test_the_script_sees_function_local_and_type_checking_imports(tmp_path, capsys):
    (tmp_path / "setup.cfg").write_text("[options]\npackage_dir =\n    dermsort.train = train\n")
    pkg = tmp_path / "train"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    (pkg / "c.py").write_text("import dermsort.train.a\n")
    assert _script().main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "dermsort.train.a -[local]-> dermsort.train.b -[typing]-> dermsort.train.a" in out
    assert "dermsort.train.c" not in out.split("circle group")[1]
    assert _script().main([str(tmp_path), "--top-level-only"]) == 0
