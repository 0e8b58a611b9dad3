"""One implementation of each metric for the whole package: dermsort.train.metrics.

Wilson intervals, AUCs and the threshold picker live there only; export/ (parity gate) and bench/
call it. These tests pin the shared functions on hand-checked values and scan the package source so
that a second copy (a Wilson formula, a roc_auc_score wrapper, another threshold picker) fails here.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dermsort.train.metrics import choose_threshold, operating_point, wilson_ci

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("train", "export", "bench", "runtime", "dermsort")
THE_MODULE = REPO / "train" / "metrics.py"
#: the torch-free core of THE module (Wilson, threshold picker), beside the runtime, re-exported by it
THE_CORE = REPO / "runtime" / "metrics.py"


# --------------------------------------------------------------------------- Wilson interval

@pytest.mark.parametrize("successes, n, low, high", [
    (9, 10, 0.5958, 0.9821),
    (5, 10, 0.2366, 0.7634),
    (1, 3, 0.0615, 0.7923),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
])
def test_wilson_ci_known_values(successes, n, low, high):
    ci = wilson_ci(successes, n)
    assert isinstance(ci, list) and len(ci) == 2
    assert ci == pytest.approx([low, high], abs=1e-4)


def test_wilson_ci_edges_and_confidence():
    assert wilson_ci(0, 0) is None and wilson_ci(0, -1) is None
    assert wilson_ci(0, 5)[0] == 0.0 and wilson_ci(5, 5)[1] == 1.0  # exact at the ends, no 1e-17 residue
    assert all(isinstance(v, float) for v in wilson_ci(3, 7))
    narrow, wide = wilson_ci(9, 10, 0.90), wilson_ci(9, 10, 0.99)
    assert wide[0] < wilson_ci(9, 10)[0] < narrow[0] and narrow[1] < wilson_ci(9, 10)[1] < wide[1]
    assert wilson_ci(9, 10, 0.99) == pytest.approx([0.4928, 0.9881], abs=1e-4)


def test_wilson_ci_matches_scipy():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    for k, n in [(0, 1), (1, 1), (3, 17), (29, 30), (150, 400)]:
        ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson_ci(k, n) == pytest.approx([ref.low, ref.high], abs=1e-12)


@pytest.mark.parametrize("module", ["dermsort.train.metrics", "dermsort.runtime.metrics"])
def test_metrics_module_imports_only_numpy(module):
    # the runtime's copy must not pull in train/ either (the runtime never imports it)
    heavy = ('torch', 'sklearn', 'scipy', 'matplotlib') + (('dermsort.train',) if 'runtime' in module else ())
    code = f"import sys, {module}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_train_reexports_the_runtime_core():
    """One implementation, two import paths: train.metrics hands out the very functions of runtime.metrics."""
    from dermsort.runtime import metrics as core
    from dermsort.train import metrics

    for name in ("wilson_ci", "choose_threshold", "confusion", "operating_point", "diagnosis_sensitivity"):
        assert getattr(metrics, name) is getattr(core, name), name


# --------------------------------------------------------------------------- the threshold picker

#            malignant ....................  benign .................................
MALIGNANT = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
P = [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.4, 0.2, 0.1, 0.05]


def _benign(threshold: float) -> int:
    return int((np.asarray(P) < threshold).sum())


@pytest.mark.parametrize("target, expected", [
    (1.0, 0.25),   # all 4 caught: lowest malignant 0.3, next lower score 0.2 -> middle of the gap
    (0.75, 0.55),  # 3 of 4: lowest caught 0.6, next lower 0.5
    (0.5, 0.75),   # 2 of 4: 0.8 over 0.7
    (0.0, 0.85),   # at least the most suspicious malignant image stays in review
])
def test_choose_threshold_without_cap(target, expected):
    t = choose_threshold(MALIGNANT, P, target)
    assert t == pytest.approx(expected)
    sens, _ = operating_point(MALIGNANT, P, t)
    assert sens >= target and not np.isclose(P, t).any()


@pytest.mark.parametrize("max_benign, expected", [
    (None, 0.55),  # uncapped: 6 images to benign
    (10, 0.55),    # a cap at or above the set size changes nothing
    (6, 0.55),     # a cap the uncapped threshold already meets changes nothing
    (4, 0.35),     # at most 4 benign: the 5th-lowest score (0.4) bounds it, middle of the gap to 0.3
    (0, 0.025),    # nothing to benign: below the lowest score
])
def test_choose_threshold_with_max_benign(max_benign, expected):
    t = choose_threshold(MALIGNANT, P, 0.75, max_benign=max_benign)
    assert t == pytest.approx(expected)
    if max_benign is not None:
        assert _benign(t) <= max_benign
    assert operating_point(MALIGNANT, P, t)[0] >= 0.75  # the cap only ever lowers it: sensitivity holds


def test_choose_threshold_refuses_what_it_cannot_calibrate():
    with pytest.raises(ValueError, match="no malignant"):
        choose_threshold([0, 0], [0.1, 0.2], 0.9)
    with pytest.raises(ValueError, match="outside"):
        choose_threshold(MALIGNANT, P, 1.5)
    assert choose_threshold([1], [0.0], 1.0) > 0.0  # never 0: the metadata schema needs (0, 1]


# --------------------------------------------------------------------------- no second copy anywhere

PICKER = re.compile(r"threshold_at_sensitivity|recalibrate_threshold|choose_threshold")
COPIES = {
    "roc_auc_score": re.compile(r"roc_auc_score"),
    "a Wilson formula": re.compile(r"z\s*\*\s*z\s*/\s*\(\s*[24]\s*\*\s*n|z\s*\*\*\s*2\s*/\s*\(\s*[24]\s*\*\s*n"),
    "a normal quantile for an interval": re.compile(r"norm\.ppf|inv_cdf|1\.9599639"),
}


def _delegates(fn: ast.FunctionDef) -> bool:
    """A one-line delegation: (docstring,) ``return choose_threshold(...)`` / ``return metrics.choose_threshold(...)``."""
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.Return) or not isinstance(body[0].value, ast.Call):
        return False
    func = body[0].value.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name == "choose_threshold"


def find_copies(root: Path = REPO) -> list[str]:
    problems = []
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            if path.resolve() in ((root / "train" / "metrics.py").resolve(), (root / "runtime" / "metrics.py").resolve()):
                continue
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(root)
            problems += [f"{rel}: contains {what}" for what, rx in COPIES.items() if rx.search(text)]
            for node in ast.walk(ast.parse(text, filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and PICKER.search(node.name) \
                        and not _delegates(node):
                    problems.append(f"{rel}:{node.lineno}: defines threshold picker {node.name}()")
    return problems


def test_one_implementation_of_each_metric():
    assert THE_MODULE.is_file() and THE_CORE.is_file()
    problems = find_copies()
    assert not problems, ("metrics belong in dermsort.train.metrics only; found copies:\n  "
                          + "\n  ".join(problems))


def test_the_scan_catches_a_copy(tmp_path):
    for folder in SOURCE_DIRS:
        (tmp_path / folder).mkdir()
    (tmp_path / "train" / "metrics.py").write_text("from sklearn.metrics import roc_auc_score\n")  # allowed here
    (tmp_path / "bench" / "ok.py").write_text(
        "from dermsort.train.metrics import choose_threshold\n\n"
        "def threshold_at_sensitivity(p, y, t):\n    '''delegates'''\n    return choose_threshold(y, p, t)\n")
    assert find_copies(tmp_path) == []
    (tmp_path / "export" / "copy.py").write_text(
        "import math\nfrom sklearn.metrics import roc_auc_score\n\n"
        "def wilson(k, n, z=1.96):\n    p = k / n\n"
        "    return z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))\n\n"
        "def recalibrate_threshold(p, y, target):\n    s = sorted(p)\n    return s[0]\n")
    found = "\n".join(find_copies(tmp_path))
    assert "roc_auc_score" in found and "Wilson formula" in found and "recalibrate_threshold" in found
    assert "bench/ok.py" not in found and "train/metrics.py" not in found
