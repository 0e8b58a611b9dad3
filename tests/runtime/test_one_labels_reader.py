"""The one labels.csv reader (runtime/labels.py): one row type and one set of rules for every part."""

from pathlib import Path

import pytest

from dermsort.runtime import labels

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_permissive_values_and_split_aliases(tmp_path):
    path = _write(tmp_path / "site-a", "\ufefffile , malignant,split,source_dataset\n"
                                       "a.jpg,1,train,X\nb.jpg,0.0,valid,\nc.jpg, TRUE ,Validation,\nd.jpg,false,test,\n"
                                       "e.jpg,1.0,VAL,\n")
    rows = labels.read_labels(path)
    assert [r.malignant for r in rows] == [1, 0, 1, 0, 1]
    assert [r.split for r in rows] == ["train", "val", "val", "test", "val"]
    assert [r.source for r in rows] == ["X", "site-a", "site-a", "site-a", "site-a"]
    assert {r.dataset for r in rows} == {"site-a"}
    assert rows[0].path == (tmp_path / "site-a" / "a.jpg").resolve() and rows[0].file == "a.jpg"
    assert [r.file for r in labels.read_labels(tmp_path / "site-a", "val")] == ["b.jpg", "c.jpg", "e.jpg"]
    assert len(labels.read_labels(path, "all")) == 5


def test_bad_rows_and_files_give_one_line_errors(tmp_path):
    bad = _write(tmp_path / "bad", "file,malignant\na.jpg,1\nb.jpg,2\n")
    with pytest.raises(labels.LabelsError, match=r"labels.csv line 3: malignant must be 0 or 1.*'2'") as info:
        labels.read_labels(bad)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(labels.LabelsError, match="lacks the column.*malignant"):
        labels.read_labels(_write(tmp_path / "nomal", "file,dx\na.jpg,nv\n"))
    assert labels.read_labels(tmp_path / "nomal", malignant_optional=True)[0].malignant is None
    with pytest.raises(labels.LabelsError, match="labelled data not found"):
        labels.read_labels(tmp_path / "nowhere")


def test_train_export_bench_and_site_read_the_same_rows():
    from dermsort.bench.data import load_labelled
    from dermsort.export import calibration
    from dermsort.runtime import site
    from dermsort.train.data import read_labels_csv

    ph2 = DATA / "ph2"
    one = labels.read_labels(ph2, "test")
    assert calibration.read_labels is labels.read_labels and calibration.LabelledImage is labels.LabelledImage
    assert sorted(one, key=lambda r: str(r.path)) == load_labelled([ph2], "test")
    assert [(c.path.resolve(), c.malignant) for c in site.read_labels(ph2, "test")] == [(r.path, r.malignant) for r in one]
    train_rows, _ = read_labels_csv(ph2 / "labels.csv")
    assert [(Path(r.path).resolve(), int(r.malignant)) for r in train_rows if r.split == "test"] == \
        [(r.path, r.malignant) for r in one]
