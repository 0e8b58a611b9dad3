"""Shared fixtures: the real data in ../shared/data and a tiny real model exported for real."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
# tests live in one folder per part; a test module may import helpers from another part's test module
for _part in ("runtime", "export", "train", "bench", "deploy"):
    sys.path.insert(1, str(Path(__file__).resolve().parent / _part))


def pytest_sessionstart(session: pytest.Session) -> None:
    if not (DATA / "ham10000-sample" / "labels.csv").is_file():
        pytest.exit(f"real test data not found at {DATA} (expected ../shared/data beside the repo; see its README)",
                    returncode=4)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def labelled(dataset: str, split: str | None = None, limit: int | None = None) -> list[dict[str, str]]:
    rows = []
    with open(DATA / dataset / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if split is None or row["split"] == split:
                row["path"] = str(DATA / dataset / row["file"])
                rows.append(row)
    return rows[:limit] if limit else rows


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN exported to ONNX (with metadata_props) and OpenVINO IR, in a real bundle."""
    from model_factory import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the machine profile must not leak between tests or into the developer's home
    monkeypatch.setenv("DERMSORT_CACHE_DIR", str(tmp_path / "cache"))
    # nor the default site profile and the run history (runtime/site.py, runtime/drift.py)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def sample_images(tmp_path: Path) -> Path:
    """A folder with 12 real dermoscopy images from three data sets."""
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    rows = labelled("ham10000-sample", "test", 4) + labelled("ph2", "test", 4) + labelled("isic2020", "test", 4)
    for row in rows:
        shutil.copy(row["path"], folder / os.path.basename(row["path"]))
    return folder
