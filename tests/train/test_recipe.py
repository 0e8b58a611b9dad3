"""The v2 training recipe: diagnosis head with set-valued labels, (set, class) sampling, the per-set
threshold rule, per-diagnosis figures, test-time flips inside the model, and DDP under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='training needs torch: pip install "dermsort[train]"')

from dermsort.train import data as D  # noqa: E402
from dermsort.train import metrics as M  # noqa: E402
from dermsort.train.objective import SetLoss, ShardedWeightedSampler, balanced_weights  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
if not (DATA / "ham10000-sample" / "labels.csv").is_file():
    pytest.exit(f"real test data not found at {DATA}: expected ../shared/data beside the repository (docs/DATA.md)",
                returncode=4)


def test_dx_targets_keep_every_labelled_image_of_the_real_sets():
    rows = D.read_sources([DATA / "isic2020", DATA / "kaggle-melanoma-sample", DATA / "ph2"])
    sets = D.label_sets("dx")
    members = D.label_set_members("dx")
    classes, malignant = D.task_classes("dx")
    for row in rows:
        target = D.class_index(row, "dx")
        assert target is not None, row  # nothing is dropped: coarse labels become label sets
        allowed = {classes[i] for i in members[target]}
        # every allowed class agrees with the row's benign/malignant truth
        assert all((c in malignant) == row.malignant for c in allowed), (row.dx, allowed)
    isic2020_unknown = [r for r in rows if r.dataset == "isic2020" and r.dx in ("unknown", "benign")]
    assert isic2020_unknown and {sets[D.class_index(r, "dx")] for r in isic2020_unknown} == {D.ANY_BENIGN}
    scc = D.Row(path="x", dx="scc", malignant=True, dataset="isic2019", image_id="i")
    assert sets[D.class_index(scc, "dx")] == "akiec"
    # the ham7 task still drops what has no HAM class
    assert any(D.class_index(r, "ham7") is None for r in rows)


def test_set_loss_is_cross_entropy_for_exact_labels_and_marginal_for_sets():
    torch.manual_seed(0)
    logits = torch.randn(6, 7)
    exact = torch.tensor([0, 1, 2, 3, 4, 5])
    loss = SetLoss(D.label_set_members("dx"), 7)
    assert torch.allclose(loss(logits, exact), torch.nn.functional.cross_entropy(logits, exact), atol=1e-6)
    smooth = SetLoss(D.label_set_members("dx"), 7, label_smoothing=0.1)
    assert torch.allclose(smooth(logits, exact), torch.nn.functional.cross_entropy(logits, exact, label_smoothing=0.1),
                          atol=1e-6)
    any_malignant = torch.tensor([D.label_sets("dx").index(D.ANY_MALIGNANT)])
    p = torch.softmax(logits[:1], 1)[0]
    mal = [D.HAM7_CLASSES.index(c) for c in D.HAM7_MALIGNANT]
    assert torch.allclose(loss(logits[:1], any_malignant), -torch.log(p[mal].sum()), atol=1e-6)


def test_balanced_weights_even_classes_inside_each_set_and_sqrt_set_shares():
    sets = ["a"] * 900 + ["b"] * 100
    y = [1] * 300 + [0] * 600 + [1] * 1 + [0] * 99
    w = balanced_weights(sets, y, max_oversample=8.0)
    a, b = np.array(sets) == "a", np.array(sets) == "b"
    assert w.sum() == pytest.approx(1.0)
    # set shares ~ sqrt(size); set b loses the part of its malignant half that the cap withholds
    assert w[a].sum() / w[b].sum() == pytest.approx(np.sqrt(900) / np.sqrt(100) / (8 * 0.01 + 0.5))
    ya = np.array(y)[a]
    assert w[a][ya == 1].sum() == pytest.approx(w[a][ya == 0].sum())  # 1:1 inside a set
    yb = np.array(y)[b]
    # one malignant image in 100 is not drawn 50x its natural rate: the cap holds
    assert w[b][yb == 1].sum() / w[b].sum() == pytest.approx(8 * 0.01 / (8 * 0.01 + 0.5), rel=1e-6)
    s = ShardedWeightedSampler(w, 1000, seed=3)
    s.set_epoch(2)
    draw = s.draw()
    r0, r1 = ShardedWeightedSampler(w, 1000, seed=3, rank=0, world=2), ShardedWeightedSampler(w, 1000, seed=3, rank=1, world=2)
    r0.set_epoch(2), r1.set_epoch(2)
    assert sorted(list(r0) + list(r1)) == sorted(draw.tolist())  # DDP ranks share one global draw


def test_threshold_rule_holds_on_every_large_set_and_pooled():
    rng = np.random.default_rng(0)
    sets = np.array(["big"] * 400 + ["hard"] * 200 + ["tiny"] * 20)
    y = np.r_[rng.random(400) < 0.3, rng.random(200) < 0.3, rng.random(20) < 0.5].astype(int)
    p = np.where(y == 1, rng.beta(5, 2, len(y)), rng.beta(2, 5, len(y)))
    p[(sets == "hard") & (y == 1)] *= 0.6  # malignant lesions of one set score lower
    threshold, basis = M.choose_threshold_sets(y, p, sets, 0.95, min_malignant=50)
    assert set(basis["sets"]) == {"pooled", "big", "hard"} and basis["binding"] == "hard"
    for name in ("big", "hard"):
        m = (sets == name) & (y == 1)
        assert np.mean(p[m] >= threshold) >= 0.95
    assert np.mean(p[y == 1] >= threshold) >= 0.95
    # a single pooled threshold would have missed the hard set: the rule is not a no-op
    pooled = M.choose_threshold(y, p, 0.95)
    assert np.mean(p[(sets == "hard") & (y == 1)] >= pooled) < 0.95


def test_triage_report_per_set_pooled_and_per_diagnosis():
    y = np.array([1, 1, 1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.8, 0.7, 0.1, 0.6, 0.95, 0.3])
    sets = ["a", "a", "a", "a", "a", "a", "b", "b"]
    dx = ["mel", "bcc", "akiec", "scc", "nv", "bkl", "mel", "nv"]
    report = M.triage_report(y, p, sets, dx, 0.5, pooled_sets=["a"], n_boot=100)
    assert report["pooled"]["n_images"] == 8 and report["per_dataset"]["b"]["n_images"] == 2
    assert report["pooled_sets"]["sets"] == ["a"] and report["pooled_sets"]["n_images"] == 6
    per_dx = report["pooled"]["per_diagnosis"]
    assert per_dx["melanoma"]["n"] == 2 and per_dx["melanoma"]["sensitivity"] == 1.0
    assert per_dx["bcc"]["n"] == 1 and per_dx["bcc"]["sensitivity"] == 0.0 and per_dx["bcc"]["missed"] == 1
    assert per_dx["scc/ak"]["n"] == 2 and per_dx["scc/ak"]["sensitivity"] == 1.0
    assert report["pooled"]["sensitivity"] == pytest.approx(4 / 5)


def test_flip_tta_is_inside_the_model_and_flip_invariant():
    from dermsort.train.models import FlipTTA, build_model

    torch.manual_seed(0)
    net = build_model("tiny_cnn", 7, False).eval()
    x = torch.randn(3, 3, 64, 64)
    tta = FlipTTA(net, "hflip").eval()
    with torch.no_grad():
        expected = (net(x) + net(torch.flip(x, (3,)))) / 2
        assert torch.allclose(tta(x), expected, atol=1e-6)
        assert torch.allclose(tta(torch.flip(x, (3,))), tta(x), atol=1e-5)  # mirror images score the same
        assert not torch.allclose(net(torch.flip(x, (3,))), net(x), atol=1e-5)


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(DATA / "ham10000-sample"), "--data", str(DATA / "ph2"),
            "--data", str(DATA / "kaggle-melanoma-sample"), "--out", str(out), "--arch", "tiny_cnn", "--task", "dx",
            "--balance", "sets", "--epochs", "2", "--batch-size", "16", "--n-boot", "100", "--min-set-malignant", "5",
            "--tta", "hflip", "--seed", "0", *extra]


def test_dx_training_run_ships_diagnosis_head_threshold_basis_and_per_diagnosis(tmp_path):
    from click.testing import CliRunner

    from dermsort.cli import cli
    from dermsort.train.trainer import load_checkpoint

    out = tmp_path / "dx"
    result = CliRunner().invoke(cli, _train_args(out))
    assert result.exit_code == 0, result.output
    model, meta, ckpt = load_checkpoint(out / "checkpoint.pt")
    assert meta.classes == D.HAM7_CLASSES and set(meta.malignant_classes) == {"mel", "bcc", "akiec"}
    assert ckpt["tta"] == "hflip" and type(model).__name__ == "FlipTTA"
    basis = meta.validation.threshold_basis
    assert basis["binding"] in basis["sets"] and "pooled" in basis["sets"]
    val = ckpt["val"]
    y, p, sets = np.array(val["malignant"]), np.array(val["p_malignant"]), np.array(val["dataset"])
    for name, info in basis["sets"].items():
        mask = (y == 1) if name == "pooled" else (y == 1) & (sets == name)
        assert info["n_malignant"] == int(mask.sum())
        assert np.mean(p[mask] >= meta.threshold) >= 0.95  # the rule holds on each basis set
    figures = json.loads((out / "metrics.json").read_text())
    assert set(figures["tta_val"]) == {"none", "hflip", "flips4"}
    assert "melanoma" in figures["test"]["pooled"]["per_diagnosis"]
    assert set(figures["test"]["per_dataset"]) == {"ham10000-sample", "kaggle-melanoma-sample", "ph2"}
    assert meta.validation.per_diagnosis["melanoma"]["n"] > 0
    # kaggle's benign/malignant-only images were trained on, not dropped
    assert "kaggle-melanoma-sample" in " ".join(meta.provenance.training_data)


def test_torchrun_two_cpu_processes_gloo(tmp_path):
    """`dermsort train` under torchrun (DDP, gloo) with 2 processes: one checkpoint, ranks in step."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dermsort.cli", *_train_args(out, "--threads", "1")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes" in proc.stdout + proc.stderr
    assert (out / "checkpoint.pt").is_file() and not (out / "last.pt").exists()
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_model_card_figures_come_from_evaluate_outputs(tiny_bundle, tmp_path):
    """Every figure in the generated card is the one `dermsort evaluate` wrote (nothing typed by hand)."""
    from click.testing import CliRunner

    from dermsort.cli import cli
    from dermsort.train import model_card

    runner = CliRunner()
    ev = tmp_path / "ev"
    result = runner.invoke(cli, ["evaluate", str(tiny_bundle), "--data", str(DATA / "ham10000-sample"), "--data",
                                 str(DATA / "ph2"), "--split", "test", "--out", str(ev), "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    figures = json.loads((ev / "metrics.json").read_text())
    assert set(figures["per_dataset"]) == {"ham10000-sample", "ph2"}
    assert figures["pooled"]["n_images"] == sum(r["n_images"] for r in figures["per_dataset"].values())
    assert "melanoma" in figures["pooled"]["per_diagnosis"]
    card = tmp_path / "docs" / "MODEL_CARD.md"
    card.parent.mkdir()
    result = runner.invoke(model_card.main, [str(tiny_bundle), "--eval", f"test={ev}", "--command",
                                             "test=dermsort evaluate X --split test", "--out", str(card)])
    assert result.exit_code == 0, result.output
    text = card.read_text()
    for name, report in [("all sets pooled", figures["pooled"])] + list(figures["per_dataset"].items()):
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert f"{report['n_images']} ({report['n_malignant']})" in row
        assert model_card._pct(report["sensitivity"], report["sensitivity_ci"]) in row
        assert model_card._auc(report) in row
    assert "not a medical device" in text.lower() and "dermsort evaluate X --split test" in text
    assert (card.parent / "model-card" / "roc-test.png").is_file()


def test_documented_recipe_is_the_one_that_trained_the_bundled_model():
    """scripts/train-default.sh's `dermsort train` options equal the config recorded in the shipped model."""
    import re
    import shutil as sh

    from dermsort.runtime.bundle import DEFAULT_BUNDLE, load_bundle

    script = (Path(__file__).resolve().parents[2] / "scripts" / "train-default.sh")
    text = script.read_text()
    block = text[text.index("TRAIN_ARGS=("):text.index(")", text.index("TRAIN_ARGS=("))]
    options = dict(re.findall(r"--([a-z-]+) ([^\s-][^\s]*)", block))
    config = load_bundle(DEFAULT_BUNDLE)[0].metadata.provenance.recipe["config"]
    expected = {"arch": config["architecture"], "task": config["task"], "balance": config["balance"],
                "freeze-stages": config["freeze_stages"], "epochs": config["epochs"], "patience": config["patience"],
                "lr": config["lr"], "head-lr-mult": config["head_lr_mult"], "label-smoothing": config["label_smoothing"],
                "weight-decay": config["weight_decay"], "tta": config["tta"], "seed": config["seed"]}
    for name, value in expected.items():
        got = options[name]
        assert (float(got) == float(value)) if isinstance(value, (int, float)) else got == value, (name, got, value)
    if sh.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_model_card_shows_the_gate_rates_of_every_evaluated_artifact(tmp_path):
    """Issue 25: the gate must hold for every accepted artifact, so the card shows the not-dermoscopy tables of
    each evaluation it is given (the reference and the fastest accepted artifact), from evaluate's own figures."""
    from click.testing import CliRunner

    from dermsort.cli import cli
    from dermsort.runtime.bundle import DEFAULT_BUNDLE
    from dermsort.train import model_card

    runner = CliRunner()
    evs = {"test": ("onnxruntime", "onnx-fp32"), "test-bf16": ("openvino", "openvino-bf16")}
    for key, (backend, artifact) in evs.items():
        result = runner.invoke(cli, ["evaluate", str(DEFAULT_BUNDLE), "--data", str(DATA / "ph2"), "--split", "test",
                                     "--backend", backend, "--artifact", artifact, "--ood", str(DATA / "ood"),
                                     "--out", str(tmp_path / key), "--n-boot", "100"])
        assert result.exit_code == 0, result.output
    card = tmp_path / "docs" / "MODEL_CARD.md"
    card.parent.mkdir()
    result = runner.invoke(model_card.main, [str(DEFAULT_BUNDLE), *[a for k in evs for a in ("--eval", f"{k}={tmp_path / k}")],
                                             "--out", str(card)])
    assert result.exit_code == 0, result.output
    text = card.read_text()
    gate_part = text[text.index("## Not-dermoscopy gate"):]
    for key, (_, artifact) in evs.items():
        figures = json.loads((tmp_path / key / "metrics.json").read_text())
        section = gate_part[gate_part.index(f"### test split ({artifact})"):]
        ph2 = figures["gate"]["per_dataset"]["ph2"]
        assert next(l for l in section.splitlines() if l.startswith("| ph2 |")).startswith(
            f"| ph2 | {ph2['n']} | {ph2['rejected']} (")
        sd198 = figures["ood"]["per_source"]["sd198"]
        assert next(l for l in section.splitlines() if l.startswith("| source: sd198 |")).startswith(
            f"| source: sd198 | {sd198['n']} | {sd198['reached_benign']} (")


def test_model_card_shows_what_the_binding_set_costs(tmp_path):
    """Issue 28: 'report the specificity this costs on each set'. The card re-runs the threshold rule on the val
    scores without the binding set and shows each set's sensitivity / specificity at both thresholds.
    Hand-worked: target 50 %, sets with >= 2 malignant. A alone -> 0.8; B binds at 0.275."""
    from dermsort.train import model_card

    rows = {"A": ([0.9, 0.7], [0.1, 0.6]), "B": ([0.3, 0.2], [0.05, 0.25])}
    folder = tmp_path / "val"
    folder.mkdir()
    lines = ["path,dataset,dx,malignant,p_malignant,decision,gate_score"]
    for name, (mal, ben) in rows.items():
        lines += [f"x.jpg,{name},mel,1,{p},review,0.1" for p in mal] + [f"x.jpg,{name},nv,0,{p},benign,0.1" for p in ben]
    (folder / "scores.csv").write_text("\n".join(lines) + "\n")
    scores = {"val": model_card.read_scores(folder)}
    basis = {"binding": "B", "target_sensitivity": 0.5, "min_malignant": 2}
    text = "\n".join(model_card.rule_cost_lines(basis, 0.275, scores))
    assert "would give 0.8 instead of 0.275" in text
    assert "| val | A | 100.0 % / 50.0 % | 50.0 % / 100.0 % |" in text
    assert "| val | B | 50.0 % / 100.0 % | 0.0 % / 100.0 % |" in text
    # no binding set (or the pooled one binds): nothing to compare
    assert model_card.rule_cost_lines({"binding": "pooled"}, 0.275, scores) == []
