"""Labelled dermoscopy images from the public data sets' own files, as one list of ``Row``.

Each reader turns one source (a CSV/TXT or a folder) into rows with a path, a diagnosis, a
malignant flag and the ids a grouped split needs (lesion, patient). Readers register themselves with
``@reads(...)`` (the file names and columns that identify their data set), the way ``models.py``
registers architectures; ``read_sources`` loops over that registry, so ``--data`` may name a file, a
data-set folder or a folder of data sets, and a new data set is one decorated function.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from dermsort.runtime import labels
from dermsort.runtime.preprocess import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

#: the seven HAM10000 classes, in the order a ``--task ham7`` head predicts them
HAM7_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
HAM7_MALIGNANT = ["mel", "bcc", "akiec"]
BINARY_CLASSES = ["benign", "malignant"]

# Diagnosis names seen in HAM10000, ISIC 2019/2020, Derm7pt, PH2 and Kaggle folders -> (canonical dx, malignant).
# Canonical dx uses HAM10000's codes where one exists, so a ham7 head can train on any of them.
_DX_TABLE: dict[str, tuple[str, bool]] = {
    "mel": ("mel", True), "melanoma": ("mel", True), "melanoma in situ": ("mel", True),
    "melanoma (in situ)": ("mel", True), "melanoma (less than 0.76 mm)": ("mel", True),
    "melanoma (0.76 to 1.5 mm)": ("mel", True), "melanoma (more than 1.5 mm)": ("mel", True),
    "melanoma metastasis": ("mel", True), "lentigo maligna": ("mel", True), "lentigo maligna melanoma": ("mel", True),
    "bcc": ("bcc", True), "basal cell carcinoma": ("bcc", True),
    "akiec": ("akiec", True), "ak": ("akiec", True), "actinic keratosis": ("akiec", True),
    "actinic keratoses": ("akiec", True), "intraepithelial carcinoma": ("akiec", True), "bowen's disease": ("akiec", True),
    "scc": ("scc", True), "squamous cell carcinoma": ("scc", True),
    "malignant": ("malignant", True),
    "nv": ("nv", False), "nevus": ("nv", False), "common_nevus": ("nv", False), "common nevus": ("nv", False),
    "atypical_nevus": ("nv", False), "atypical nevus": ("nv", False), "blue nevus": ("nv", False),
    "clark nevus": ("nv", False), "combined nevus": ("nv", False), "congenital nevus": ("nv", False),
    "dermal nevus": ("nv", False), "recurrent nevus": ("nv", False), "reed or spitz nevus": ("nv", False),
    "bkl": ("bkl", False), "seborrheic keratosis": ("bkl", False), "lentigo nos": ("bkl", False),
    "solar lentigo": ("bkl", False), "lichenoid keratosis": ("bkl", False), "lentigo": ("bkl", False),
    "benign keratosis": ("bkl", False), "melanosis": ("bkl", False),
    "df": ("df", False), "dermatofibroma": ("df", False),
    "vasc": ("vasc", False), "vascular lesion": ("vasc", False),
    "cafe-au-lait macule": ("benign", False), "atypical melanocytic proliferation": ("benign", False),
    "benign": ("benign", False), "unknown": ("unknown", False), "unk": ("unknown", False),
    "miscellaneous": ("unknown", False),
}
#: ISIC 2019 ground-truth columns (one-hot) -> diagnosis names above
ISIC2019_COLUMNS = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
#: PH2 "Clinical Diagnosis" codes
PH2_CODES = {"0": "common_nevus", "1": "atypical_nevus", "2": "melanoma"}
# ISIC archive ids are unique across its data sets (HAM10000, ISIC 2019/2020 reuse them), so they
# link the same lesion or patient between sources; any other id is only unique inside its data set.
_GLOBAL_ID = re.compile(r"^(HAM|IP|IL|ISIC)_\d+$")


def normalise_dx(dx: str) -> tuple[str, bool | None]:
    """Diagnosis text -> (canonical dx, malignant) ; malignant is None for a name we do not know."""
    key = dx.strip().lower().replace("-", " ") if dx else "unknown"
    key = {"common nevus": "common_nevus", "atypical nevus": "atypical_nevus"}.get(key, key)
    for candidate in (key, key.replace("_", " ")):
        if candidate in _DX_TABLE:
            return _DX_TABLE[candidate]
    if "melanoma" in key:
        return "mel", True
    if "carcinoma" in key:
        return key, True
    if "nevus" in key or "naevus" in key:
        return "nv", False
    return key, None


def ham7_label(dx: str) -> str | None:
    """The HAM10000 class for a canonical dx, or None (benign/unknown-only and SCC have no HAM7 class)."""
    return dx if dx in HAM7_CLASSES else None


@dataclass
class Row:
    """One labelled image."""

    path: str
    dx: str
    malignant: bool
    dataset: str
    image_id: str
    lesion_id: str = ""
    patient_id: str = ""
    #: "train" / "val" / "test" when the source fixes it, else ""
    split: str = ""
    #: the diagnosis text as the source wrote it
    dx_raw: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def group_id(self) -> str:
        """patient, else lesion, else image: the unit that must stay on one side of a split."""
        return self.patient_key or self.lesion_key or _scoped(self.image_id, self.dataset)

    @property
    def lesion_key(self) -> str:
        return _scoped(self.lesion_id, self.dataset) if self.lesion_id else ""

    @property
    def patient_key(self) -> str:
        return _scoped(self.patient_id, self.dataset) if self.patient_id else ""


def _scoped(value: str, dataset: str) -> str:
    value = value.strip()
    return value if _GLOBAL_ID.match(value) else f"{dataset}:{value}"


@dataclass
class SourceReport:
    """What one ``--data`` source gave: printed per source so a user sees what was read."""

    source: str
    reader: str
    rows: int = 0
    missing_images: int = 0
    unlabelled: int = 0
    by_dx: Counter = field(default_factory=Counter)
    n_malignant: int = 0

    def line(self) -> str:
        dx = ", ".join(f"{k} {v}" for k, v in sorted(self.by_dx.items(), key=lambda kv: -kv[1]))
        text = f"{self.source} [{self.reader}]: {self.rows} images, {self.n_malignant} malignant ({dx})"
        if self.missing_images:
            text += f"; {self.missing_images} rows without an image file skipped"
        if self.unlabelled:
            text += f"; {self.unlabelled} rows with an unknown diagnosis skipped"
        return text


# --------------------------------------------------------------------------- file helpers

def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh)]


class _ImageFinder:
    """Finds ``<image_id>.<ext>`` in candidate folders (indexed once: data sets have 10k+ files)."""

    def __init__(self, folders: Iterable[Path], recursive: bool = False):
        self.index: dict[str, str] = {}
        for folder in folders:
            if not folder.is_dir():
                continue
            walker = folder.rglob("*") if recursive else folder.iterdir()
            for path in walker:
                if path.suffix.lower() in IMAGE_EXTENSIONS or path.suffix.lower() == ".bmp":
                    self.index.setdefault(path.stem, str(path))
                    self.index.setdefault(path.stem.replace("_downsampled", ""), str(path))

    def find(self, image_id: str) -> str | None:
        return self.index.get(image_id)


def _finish(rows: list[Row], report: SourceReport) -> list[Row]:
    report.rows = len(rows)
    report.by_dx = Counter(r.dx for r in rows)
    report.n_malignant = sum(r.malignant for r in rows)
    return rows


def _label(dx_raw: str, report: SourceReport, malignant: bool | None = None) -> tuple[str, bool] | None:
    dx, is_malignant = normalise_dx(dx_raw)
    if malignant is not None:
        is_malignant = malignant
    if is_malignant is None:
        report.unlabelled += 1
        log.warning("%s: unknown diagnosis %r skipped", report.source, dx_raw)
        return None
    return dx, is_malignant


# --------------------------------------------------------------------------- the registry of data-set formats

Reader = Callable[..., tuple[list[Row], SourceReport]]


@dataclass(frozen=True)
class SourceFormat:
    """One data set's own label file: its reader and how a file or a folder is recognised as it."""

    name: str
    read: Reader
    #: files (relative to a data-set folder) read as this format, most specific first
    files: tuple[str, ...] = ()
    #: a CSV's header columns -> whether they are this format (a file given by path, whatever its name)
    columns: Callable[[set[str]], bool] | None = None
    #: name endings that are this format whatever the rest of the name (PH2's .txt table)
    suffixes: tuple[str, ...] = ()
    #: entries of ``files`` other data sets use too: read as this format only when the columns agree
    shared_names: tuple[str, ...] = ()
    #: a file given by path is this format when its name is one of ``files`` (False: by its columns only)
    by_name: bool = True
    #: column checks run by ascending rank, then registration order (generic columns go last)
    columns_rank: int = 0


_FORMATS: list[SourceFormat] = []


def reads(name: str, *, files: Sequence[str] = (), columns: Callable[[set[str]], bool] | None = None,
          suffixes: Sequence[str] = (), shared_names: Sequence[str] = (), by_name: bool = True,
          columns_rank: int = 0) -> Callable[[Reader], Reader]:
    """Register the decorated function as the reader of data-set format ``name``.

    Registration order is the order a folder's files are looked for (the first present wins).
    """
    def register(read: Reader) -> Reader:
        _FORMATS.append(SourceFormat(name, read, tuple(files), columns, tuple(suffixes), tuple(shared_names),
                                     by_name, columns_rank))
        return read
    return register


def list_formats() -> list[SourceFormat]:
    """The registered data-set formats, in folder-probing order."""
    return list(_FORMATS)


def _has(*required: str, any_of: Sequence[str] = ()) -> Callable[[set[str]], bool]:
    """Columns test: every ``required`` column, and at least one of ``any_of`` when given."""
    return lambda columns: set(required) <= columns and (not any_of or bool(set(any_of) & columns))


# --------------------------------------------------------------------------- readers

@reads("labels.csv", files=("labels.csv",), columns=lambda c: {"file", "dx"} <= c or {"file", "malignant"} <= c)
def read_labels_csv(path: Path, require_images: bool = True, dataset: str | None = None) -> tuple[list[Row], SourceReport]:
    """The plain ``labels.csv`` (image_id, file, dx, malignant, lesion_id, [patient_id], split).

    Read by ``dermsort.runtime.labels`` (the one labels.csv reader, so its malignant/split rules are
    the export's and the bench's); an empty malignant cell is labelled from the row's ``dx``.
    """
    path = Path(path)
    dataset = dataset or path.parent.name
    report = SourceReport(str(path), "labels.csv")
    rows = []
    for labelled in labels.read_labels(path, None, malignant_optional=True):
        rec, file = labelled.fields, labelled.file
        image = path.parent / file
        if require_images and not (file and image.is_file()):
            report.missing_images += 1
            continue
        malignant = None if labelled.malignant is None else bool(labelled.malignant)
        label = _label(rec.get("dx", ""), report, malignant)
        if label is None:
            continue
        rows.append(Row(path=str(image), dx=label[0], malignant=label[1], dataset=dataset,
                        image_id=rec.get("image_id") or Path(file).stem, lesion_id=rec.get("lesion_id", ""),
                        patient_id=rec.get("patient_id", ""), split=labelled.split,
                        dx_raw=rec.get("dx", ""), extra={k: rec[k] for k in ("source_dataset", "age", "sex") if rec.get(k)}))
    return _finish(rows, report), report


@reads("HAM10000", files=("HAM10000_metadata.csv",), columns=_has("lesion_id", "image_id", "dx"),
       columns_rank=1)  # a labels.csv carries these columns too: asked after every other format
def read_ham10000(path: Path, require_images: bool = True) -> tuple[list[Row], SourceReport]:
    """``HAM10000_metadata.csv``; images beside it, in images/ or the official part_1/part_2 folders."""
    path = Path(path)
    report = SourceReport(str(path), "HAM10000")
    root = path.parent
    finder = _ImageFinder([root, root / "images", root / "HAM10000_images_part_1", root / "HAM10000_images_part_2",
                           root / "HAM10000_images"]) if require_images else None
    rows = []
    for rec in _read_csv(path):
        image = finder.find(rec["image_id"]) if finder else str(root / "images" / f"{rec['image_id']}.jpg")
        if image is None:
            report.missing_images += 1
            continue
        label = _label(rec["dx"], report)
        if label is None:
            continue
        rows.append(Row(path=image, dx=label[0], malignant=label[1], dataset="HAM10000", image_id=rec["image_id"],
                        lesion_id=rec.get("lesion_id", ""), dx_raw=rec["dx"]))
    return _finish(rows, report), report


@reads("ISIC2019", files=("ISIC_2019_Training_GroundTruth.csv",), columns=_has("image", "MEL", "NV"))
def read_isic2019(path: Path, require_images: bool = True) -> tuple[list[Row], SourceReport]:
    """``ISIC_2019_Training_GroundTruth.csv`` (one-hot) + the optional metadata CSV beside it (lesion_id)."""
    path = Path(path)
    report = SourceReport(str(path), "ISIC2019")
    root = path.parent
    meta: dict[str, dict[str, str]] = {}
    for candidate in sorted(root.glob("ISIC_2019_*Metadata*.csv")):
        meta.update({r["image"]: r for r in _read_csv(candidate)})
    finder = _ImageFinder([root, root / "images", root / "ISIC_2019_Training_Input",
                           root / "ISIC_2019_Training_Input" / "ISIC_2019_Training_Input"]) if require_images else None
    rows = []
    for rec in _read_csv(path):
        image_id = rec["image"]
        hot = [c for c in ISIC2019_COLUMNS if c in rec and rec[c] and float(rec[c]) >= 0.5]
        if len(hot) != 1:
            report.unlabelled += 1
            continue
        image = finder.find(image_id) if finder else str(root / f"{image_id}.jpg")
        if image is None:
            report.missing_images += 1
            continue
        label = _label(hot[0], report)
        if label is None:
            continue
        lesion = meta.get(image_id, {}).get("lesion_id", "")
        rows.append(Row(path=image, dx=label[0], malignant=label[1], dataset="ISIC2019", image_id=image_id,
                        lesion_id=lesion, dx_raw=hot[0]))
    return _finish(rows, report), report


@reads("ISIC2020", files=("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv", "train.csv"),
       columns=_has("target", any_of=("image_name", "isic_id")), shared_names=("train.csv",), by_name=False)
def read_isic2020(path: Path, require_images: bool = True) -> tuple[list[Row], SourceReport]:
    """ISIC 2020 ground truth (image_name or isic_id, patient_id, diagnosis, target); target decides malignancy."""
    path = Path(path)
    report = SourceReport(str(path), "ISIC2020")
    root = path.parent
    finder = _ImageFinder([root, root / "images", root / "train", root / "jpeg" / "train",
                           root / "ISIC_2020_Training_JPEG", root / "ISIC_2020_Training_JPEG" / "train"]) if require_images else None
    rows = []
    for rec in _read_csv(path):
        image_id = rec.get("image_name") or rec.get("isic_id") or rec.get("image_id", "")
        image = finder.find(image_id) if finder else str(root / f"{image_id}.jpg")
        if image is None:
            report.missing_images += 1
            continue
        target = rec.get("target") or {"malignant": "1", "benign": "0"}.get(rec.get("benign_malignant", "").lower(), "")
        if target == "":
            report.unlabelled += 1
            continue
        label = _label(rec.get("diagnosis", "") or "unknown", report, malignant=bool(int(float(target))))
        if label is None:
            continue
        rows.append(Row(path=image, dx=label[0], malignant=label[1], dataset="ISIC2020", image_id=image_id,
                        lesion_id=rec.get("lesion_id", ""), patient_id=rec.get("patient_id", ""),
                        dx_raw=rec.get("diagnosis", "")))
    return _finish(rows, report), report


@reads("Derm7pt", files=("meta.csv", "meta/meta.csv"), columns=_has("case_num", "diagnosis", "derm"))
def read_derm7pt(path: Path, require_images: bool = True) -> tuple[list[Row], SourceReport]:
    """Derm7pt ``meta.csv`` (case_num, diagnosis, derm): the dermoscopic image of each case."""
    path = Path(path)
    report = SourceReport(str(path), "Derm7pt")
    root = path.parent
    bases = [root, root / "images", root.parent / "images", root.parent]
    rows = []
    for rec in _read_csv(path):
        rel = rec.get("derm", "")
        image = next((str(b / rel) for b in bases if rel and (b / rel).is_file()), None)
        if image is None and not require_images and rel:
            image = str(root.parent / "images" / rel)
        if image is None:
            report.missing_images += 1
            continue
        label = _label(rec.get("diagnosis", ""), report)
        if label is None:
            continue
        case = rec.get("case_num", "") or Path(rel).stem
        rows.append(Row(path=image, dx=label[0], malignant=label[1], dataset="Derm7pt", image_id=f"case{case}",
                        lesion_id=f"case{case}", dx_raw=rec.get("diagnosis", "")))
    return _finish(rows, report), report


def parse_ph2_table(path: Path) -> list[dict[str, str]]:
    """PH2_dataset.txt in either of its published forms: the ``||``-delimited table or tab-separated.

    Returns one dict per image (Name, Clinical Diagnosis, ...); legend lines are left out.
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    records: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if "|" in line:
            cells = [c.strip() for c in line.strip().strip("|").replace("||", "|").split("|")]
        else:
            cells = [c.strip().strip('"') for c in line.split("\t")]
        if header is None:
            if any(c.lower() == "name" for c in cells):
                header = cells
            continue
        if not cells or not re.match(r"^IMD\d+$", cells[0]):
            continue  # legend lines at the end of the file
        records.append(dict(zip(header, cells + [""] * (len(header) - len(cells)))))
    if header is None:
        raise ValueError(f"{path}: no header line with a 'Name' column (not a PH2_dataset.txt?)")
    return records


@reads("PH2", files=("PH2_dataset.txt",), suffixes=(".txt",))
def read_ph2(path: Path, require_images: bool = True) -> tuple[list[Row], SourceReport]:
    """PH2 ``PH2_dataset.txt``; images in images/ or the original ``PH2 Dataset images/IMDxxx/...`` tree."""
    path = Path(path)
    report = SourceReport(str(path), "PH2")
    root = path.parent
    finder = _ImageFinder([root, root / "images"]) if require_images else None
    original = root / "PH2 Dataset images"
    rows = []
    for rec in parse_ph2_table(path):
        name = rec.get("Name", "")
        code = next((v for k, v in rec.items() if k.lower().startswith("clinical diagnosis")), "").strip()
        dx_raw = PH2_CODES.get(code)
        if dx_raw is None:
            report.unlabelled += 1
            continue
        image = finder.find(name) if finder else str(root / "images" / f"{name}.jpg")
        if image is None:
            bmp = original / name / f"{name}_Dermoscopic_Image" / f"{name}.bmp"
            image = str(bmp) if bmp.is_file() else None
        if image is None:
            report.missing_images += 1
            continue
        label = _label(dx_raw, report)
        if label is None:
            continue
        rows.append(Row(path=image, dx=label[0], malignant=label[1], dataset="PH2", image_id=name, lesion_id=name,
                        dx_raw=dx_raw))
    return _finish(rows, report), report


def read_class_folders(path: Path, require_images: bool = True) -> tuple[list[Row], SourceReport]:
    """FOLDER/<class>/*.jpg with class = benign/malignant or a diagnosis name (mel, nv, ...).

    A split level is honoured too: FOLDER/{train,val,test}/<class>/*.jpg.
    """
    path = Path(path)
    report = SourceReport(str(path), "class folders")
    rows = []

    def walk(folder: Path, split: str) -> None:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            name = sub.name.lower()
            if not split and name in {"train", "val", "valid", "validation", "test"}:
                walk(sub, labels.parse_split(name))
                continue
            label = _label(sub.name, report)
            if label is None:
                continue
            for image in sorted(sub.rglob("*")):
                if image.suffix.lower() in IMAGE_EXTENSIONS and image.is_file():
                    rows.append(Row(path=str(image), dx=label[0], malignant=label[1], dataset=path.name,
                                    image_id=image.stem, split=split, dx_raw=sub.name))

    walk(path, "")
    return _finish(rows, report), report


# --------------------------------------------------------------------------- dispatch

def reader_for_file(path: Path) -> Reader:
    """Pick a reader by the file's name ending, else its name, else its columns."""
    name = path.name
    for fmt in _FORMATS:
        if fmt.suffixes and name.lower().endswith(fmt.suffixes):
            return fmt.read
    for fmt in _FORMATS:
        if fmt.by_name and any(name == Path(known).name for known in fmt.files):
            return fmt.read
    with open(path, newline="", encoding="utf-8-sig") as fh:
        columns = {c.strip() for c in next(csv.reader(fh), [])}
    for fmt in sorted(_FORMATS, key=lambda f: f.columns_rank):  # sorted() is stable: registration order within a rank
        if fmt.columns is not None and fmt.columns(columns):
            return fmt.read
    raise ValueError(f"{path}: cannot tell which data set this is (columns: {', '.join(sorted(columns))})")


def read_source(path: str | os.PathLike, require_images: bool = True) -> tuple[list[Row], list[SourceReport]]:
    """One ``--data`` argument -> rows. A folder of data sets (each with labels.csv) reads them all.

    A folder is read by the first registered format whose file it holds; failing that, its sub-folders
    that hold one are read each; failing that, it is read as class folders (``read_class_folders``).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    if path.is_file():
        rows, report = reader_for_file(path)(path, require_images=require_images)
        return rows, [report]
    for fmt in _FORMATS:
        for known in fmt.files:
            candidate = path / known
            if not candidate.is_file():
                continue
            if known in fmt.shared_names and reader_for_file(candidate) is not fmt.read:
                continue
            rows, report = fmt.read(candidate, require_images=require_images)
            return rows, [report]
    known_files = [known for fmt in _FORMATS for known in fmt.files]
    subsets = sorted(p for p in path.iterdir() if p.is_dir() and any((p / k).is_file() for k in known_files))
    if subsets:
        rows, reports = [], []
        for sub in subsets:
            sub_rows, sub_reports = read_source(sub, require_images)
            rows += sub_rows
            reports += sub_reports
        return rows, reports
    class_dirs = [p for p in path.iterdir() if p.is_dir()]
    if class_dirs:
        rows, report = read_class_folders(path, require_images)
        if rows:
            return rows, [report]
    raise ValueError(f"--data {path}: no labels.csv, known metadata file or class folders found")


def read_sources(paths: Iterable[str | os.PathLike], require_images: bool = True,
                 echo: Callable[[str], None] | None = None) -> list[Row]:
    """Every ``--data`` source -> one list of rows (an image named twice is kept once)."""
    rows: list[Row] = []
    seen: set[str] = set()
    for path in paths:
        source_rows, reports = read_source(path, require_images)
        for report in reports:
            (echo or log.info)(report.line())
        duplicates = 0
        for row in source_rows:
            key = os.path.realpath(row.path)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            rows.append(row)
        if duplicates:
            (echo or log.info)(f"{path}: {duplicates} images already read from an earlier --data were skipped")
    if not rows:
        raise ValueError("no labelled images found in " + ", ".join(map(str, paths)))
    return rows


#: coarse label sets a row can have when its diagnosis is not one of a head's classes (``--task dx``)
ANY_BENIGN, ANY_MALIGNANT = "any-benign", "any-malignant"
#: canonical dx -> dx-head class where the names differ (HAM's akiec covers AK, Bowen's and SCC)
_DX_HEAD_ALIAS = {"scc": "akiec"}


def label_sets(task: str) -> list[str]:
    """Every target a head of ``task`` trains on: its classes, then (dx only) the coarse sets."""
    classes, _ = task_classes(task)
    return classes + ([ANY_BENIGN, ANY_MALIGNANT] if task == "dx" else [])


def label_set_members(task: str) -> list[list[int]]:
    """For each entry of ``label_sets(task)``, the class indices it allows (a coarse label allows several)."""
    classes, malignant = task_classes(task)
    members = [[i] for i in range(len(classes))]
    if task == "dx":
        members.append([i for i, c in enumerate(classes) if c not in malignant])
        members.append([i for i, c in enumerate(classes) if c in malignant])
    return members


def class_index(row: Row, task: str) -> int | None:
    """The training target for ``task``, None to skip the row.

    binary: 0 benign / 1 malignant. ham7: the HAM7 index (rows without one are skipped).
    dx: the HAM7 index when the diagnosis is one of them (SCC counts as akiec), otherwise the index of
    the coarse set "any benign class" / "any malignant class" in ``label_sets('dx')`` - so ISIC 2020's
    "unknown" benign lesions and benign/malignant-only sets still train the head (set-valued loss).
    """
    if task == "binary":
        return int(row.malignant)
    if task == "ham7":
        label = ham7_label(row.dx)
        return None if label is None else HAM7_CLASSES.index(label)
    if task == "dx":
        label = ham7_label(_DX_HEAD_ALIAS.get(row.dx, row.dx))
        if label is not None and (label in HAM7_MALIGNANT) == bool(row.malignant):
            return HAM7_CLASSES.index(label)
        return label_sets("dx").index(ANY_MALIGNANT if row.malignant else ANY_BENIGN)
    raise ValueError(f"unknown task {task!r} (binary, ham7 or dx)")


def task_classes(task: str) -> tuple[list[str], list[str]]:
    """(class names, malignant class names) of a task's head."""
    if task == "binary":
        return list(BINARY_CLASSES), ["malignant"]
    if task in ("ham7", "dx"):
        return list(HAM7_CLASSES), list(HAM7_MALIGNANT)
    raise ValueError(f"unknown task {task!r} (binary, ham7 or dx)")
