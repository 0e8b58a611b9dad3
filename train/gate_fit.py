"""Fit the not-dermoscopy gate on a trained checkpoint, compare the candidates, write a gated checkpoint.

    dermsort fit-gate CHECKPOINT --data ../shared/data/ham10000 ... --ood ../shared/data/ood --out GATED.pt

Features come from the checkpoint's own model through the runtime's preprocessing (the pixels every
backend sees). Fitting uses training images only (dermoscopy train splits; ``ood.csv`` train split plus
rendered negatives); every threshold is chosen on the val splits; test figures are reported, never used.
The candidates (max-softmax and energy baselines, Mahalanobis, the outlier-exposure probe and their
combination) are measured side by side on the same splits and written to ``OUT_DIR/gate-candidates.md``.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dermsort.runtime.metadata import GateSpec, ModelMetadata
from dermsort.runtime.ood import read_ood
from dermsort.runtime.preprocess import UnreadableImage, preprocess

from . import metrics
from .gate import GatedClassifier, gate_to_state, layer_widths
from .negatives import rendered_negatives

log = logging.getLogger(__name__)
Echo = Callable[[str], None]

#: at most this share of each large dermoscopy val set may be rejected at the chosen threshold
VAL_REJECT_BUDGET = 0.01
#: a dermoscopy val set joins the threshold rule with at least this many images
MIN_SET_IMAGES = 100


# --------------------------------------------------------------------------- data

def extract(model: GatedClassifier, items: Sequence[Any], spec: Any, batch_size: int = 32,
            echo: Echo = print, label: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, logits, ok mask) for file paths or PIL images, through the runtime's preprocessing."""
    import torch

    from PIL import Image

    def load(item: Any) -> np.ndarray | None:
        try:
            if isinstance(item, Image.Image):
                import io

                buf = io.BytesIO()
                item.save(buf, "PNG")
                data = buf.getvalue()
                name = "rendered.png"
            else:
                with open(item, "rb") as fh:
                    data = fh.read()
                name = os.fspath(item)
            return preprocess(data, spec, name)[0]
        except (UnreadableImage, OSError):
            return None

    feats, logits, ok = [], [], []
    model.eval()
    with ThreadPoolExecutor(2) as pool, torch.no_grad():
        for start in range(0, len(items), batch_size):
            arrays = list(pool.map(load, items[start:start + batch_size]))
            good = [a for a in arrays if a is not None]
            ok.extend(a is not None for a in arrays)
            if good:
                f, lg = model.views(torch.from_numpy(np.stack(good)))
                feats.append(f.numpy())
                logits.append(lg.numpy())
            if start and start % (batch_size * 40) == 0:
                echo(f"  features {label}: {start}/{len(items)}")
    width = model.head.in_features if hasattr(model.head, "in_features") else 0
    return (np.concatenate(feats) if feats else np.zeros((0, width), np.float32),
            np.concatenate(logits) if logits else np.zeros((0, 0), np.float32), np.asarray(ok, bool))


# --------------------------------------------------------------------------- the scores

def fit_mahalanobis(feats: np.ndarray, classes: np.ndarray, mean: np.ndarray, k: int | None,
                    shrinkage: float = 0.05) -> dict[str, Any]:
    """Tied-covariance class-conditional Gaussians (Lee et al. 2018) in a whitened PCA subspace of ``k`` dims."""
    centred = feats - mean
    labels = np.unique(classes)
    class_means = np.stack([centred[classes == c].mean(axis=0) for c in labels])
    within = centred - class_means[np.searchsorted(labels, classes)]
    cov = within.T @ within / max(1, len(within) - len(labels))
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][: (k or len(values))]
    projection = (vectors[:, order] / np.sqrt(values[order])).T  # (k, F): whitening
    return {"projection": projection.astype(np.float32), "class_means": (class_means @ projection.T).astype(np.float32),
            "k": int(len(order)), "shrinkage": shrinkage, "offset": 0.0, "scale": 1.0}


def mahalanobis_distance(feats: np.ndarray, mean: np.ndarray, maha: dict[str, Any]) -> np.ndarray:
    z = (feats - mean) @ maha["projection"].T
    d = ((z[:, None, :] - maha["class_means"][None]) ** 2).sum(axis=2).min(axis=1)
    return np.sqrt(np.maximum(d, 0.0))


def fit_probe(pos: np.ndarray, neg: np.ndarray, mean: np.ndarray, l2: float = 1e-2, steps: int = 300) -> dict[str, Any]:
    """Class-balanced L2 logistic regression of "not dermoscopy" (Newton steps on standardised features)."""
    x = np.concatenate([pos, neg]) - mean
    scale = x.std(axis=0) + 1e-6
    xs = np.concatenate([x / scale, np.ones((len(x), 1))], axis=1)
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    w_sample = np.where(y == 1, 0.5 / len(pos), 0.5 / len(neg))
    w = np.zeros(xs.shape[1])
    reg = np.full(xs.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(min(steps, 30)):
        p = 1 / (1 + np.exp(-np.clip(xs @ w, -30, 30)))
        grad = xs.T @ (w_sample * (p - y)) + reg * w
        hess = (xs * (w_sample * p * (1 - p))[:, None]).T @ xs + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return {"weight": (w[:-1] / scale).astype(np.float32), "bias": float(w[-1]), "l2": l2, "offset": 0.0, "scale": 1.0}


def probe_score(feats: np.ndarray, mean: np.ndarray, probe: dict[str, Any]) -> np.ndarray:
    return (feats - mean) @ probe["weight"] + probe["bias"]


def energy(logits: np.ndarray) -> np.ndarray:
    """Negative energy's opposite: larger = less in-distribution (Liu et al. 2020)."""
    m = logits.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))


def msp(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return 1.0 - (e / e.sum(axis=1, keepdims=True)).max(axis=1)


def pick_threshold(scores: np.ndarray, sets: np.ndarray, budget: float = VAL_REJECT_BUDGET,
                   min_images: int = MIN_SET_IMAGES) -> float:
    """Smallest threshold that rejects at most ``budget`` of every large dermoscopy val set and of them pooled."""
    pools = [scores] + [scores[sets == s] for s in np.unique(sets) if (sets == s).sum() >= min_images]
    return float(max(np.quantile(p, 1.0 - budget, method="higher") for p in pools))


# --------------------------------------------------------------------------- evaluation of one score

def rates(score_in: np.ndarray, sets_in: np.ndarray, score_out: np.ndarray, kinds_out: np.ndarray,
          p_out: np.ndarray, threshold: float, p_threshold: float) -> dict[str, Any]:
    """At ``threshold``: dermoscopy rejected per set; OOD reaching benign/ (passes the gate and p < p_threshold)."""
    derm = {str(s): {"n": int((sets_in == s).sum()), "rejected": int((score_in[sets_in == s] >= threshold).sum())}
            for s in sorted(np.unique(sets_in))}
    derm["pooled"] = {"n": int(len(score_in)), "rejected": int((score_in >= threshold).sum())}
    for v in derm.values():
        v["rejected_rate"] = v["rejected"] / v["n"] if v["n"] else None
    ood: dict[str, Any] = {}
    for kind in sorted(np.unique(kinds_out)):
        m = kinds_out == kind
        passed = score_out[m] < threshold
        benign = passed & (p_out[m] < p_threshold)
        ood[str(kind)] = {"n": int(m.sum()), "passed_gate": int(passed.sum()), "reached_benign": int(benign.sum()),
                     "reached_benign_rate": float(benign.mean()) if m.any() else None,
                     "reached_benign_ci": metrics.wilson_ci(int(benign.sum()), int(m.sum())),
                     "auroc": metrics.auc_score(np.r_[np.zeros(len(score_in)), np.ones(int(m.sum()))],
                                                np.r_[score_in, score_out[m]]),
                     "fpr_at_95tpr": metrics.fpr_at_tpr(score_in, score_out[m])}
    return {"threshold": float(threshold), "dermoscopy": derm, "ood": ood}


def _fmt_rates(name: str, r: dict[str, Any]) -> str:
    derm = ", ".join(f"{s} {100 * v['rejected_rate']:.1f} %" for s, v in r["dermoscopy"].items() if v["n"])
    ood = ", ".join(f"{k}: AUROC {v['auroc']:.3f}, FPR@95 {100 * (v['fpr_at_95tpr'] or 0):.1f} %, to benign "
                    f"{v['reached_benign']}/{v['n']}" for k, v in r["ood"].items())
    return f"| {name} | {derm} | {ood} |"


def gate_metadata(metadata: ModelMetadata, spec: GateSpec) -> ModelMetadata:
    data = metadata.to_dict()
    data["gate"] = asdict(spec)
    return ModelMetadata.from_dict(data)


def write_gated(ckpt: dict[str, Any], gate: dict[str, Any], spec: GateSpec, metadata: ModelMetadata,
                out: Path) -> None:
    import torch

    new = dict(ckpt)
    new["gate"] = gate_to_state(gate)
    # plain JSON types only (numpy keys/scalars would make the checkpoint need full unpickling to load)
    new["metadata"] = json.loads(json.dumps(gate_metadata(metadata, spec).to_dict(), default=_plain))
    tmp = out.with_name(f".{out.name}.part")
    torch.save(new, tmp)
    os.replace(tmp, out)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def summary_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=1, default=float))


# --------------------------------------------------------------------------- the command

def empty_gate(width: int) -> dict[str, Any]:
    return {"use": ["mahalanobis"], "feature_mean": np.zeros(width, np.float32),
            "mahalanobis": {"projection": np.zeros((1, width), np.float32), "class_means": np.zeros((1, 1), np.float32),
                            "offset": 0.0, "scale": 1.0}}


def _standardise(part: dict[str, Any], val_in: np.ndarray, sets: np.ndarray) -> None:
    """Set ``offset``/``scale`` so the component's own val operating point is 0 and its val spread is 1."""
    part["offset"] = pick_threshold(val_in, sets)
    part["scale"] = 1.0 / float(max(np.std(val_in), 1e-6))


def fit_gate(checkpoint: str | os.PathLike, data: Sequence[str], ood: str, out: Path, report_dir: Path,
             k: int | None = None, n_rendered: int = 280, per_set_train: int | None = None, use: str = "auto",
             feature_sets: dict[str, list[int]] | None = None, echo: Echo = print) -> dict[str, Any]:
    """Fit, compare and write the gated checkpoint; returns the comparison (also in ``report_dir``)."""
    import random

    import torch

    from .data import class_index, read_sources
    from .checkpoint import read_checkpoint
    from .models import build_model, classifier_of, count_stages

    ckpt = read_checkpoint(checkpoint)
    metadata = ModelMetadata.from_dict(ckpt["metadata"])
    task = metadata.provenance.recipe.get("task", "dx")
    arch = ckpt["architecture"]
    base = build_model(arch, int(ckpt["num_classes"]), pretrained=False)
    base.load_state_dict(ckpt["state_dict"], strict=True)
    width = classifier_of(base, arch).in_features
    feature_sets = candidate_feature_sets(count_stages(base, arch)) if feature_sets is None else feature_sets
    taps = sorted({i for layers in feature_sets.values() for i in layers})
    tap_widths = layer_widths(base, arch, taps)
    # one pass extracts every candidate's features: the tapped stages' means, then the penultimate
    model = GatedClassifier(base, arch, ckpt.get("tta"), {**empty_gate(width), "layers": taps}).eval()
    spec = metadata.preprocess
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    rows = [r for r in read_sources(data, echo=lambda *_a: None) if r.split in ("train", "val", "test")]
    rng = random.Random(0)
    by_set: dict[str, list[Any]] = {}
    for r in rows:
        if r.split == "train" and class_index(r, task) is not None:
            by_set.setdefault(r.dataset, []).append(r)
    train_rows = []
    for name in sorted(by_set):
        rng.shuffle(by_set[name])
        train_rows += by_set[name][:per_set_train]  # None: every train image
    ood_rows = read_ood(ood)
    rendered = rendered_negatives(n_rendered, seed=0)
    n_fit = n_rendered * 2 // 3  # the rest judge the rendered kinds on val, apart from the real photos

    def feats_of(items: list[Any], label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        echo(f"features of {len(items)} {label} images")
        return extract(model, items, spec, echo=echo, label=label)

    f_tr, _, ok_tr = feats_of([r.path for r in train_rows], "dermoscopy train")
    train_rows = [r for r, ok in zip(train_rows, ok_tr) if ok]
    cls_tr = np.array([class_index(r, task) for r in train_rows])
    split_rows = {s: [r for r in rows if r.split == s] for s in ("val", "test")}
    f_in, lg_in, sets_in, p_in, y_in = {}, {}, {}, {}, {}
    mal = metadata.malignant_indices()
    for s, rs in split_rows.items():
        f, lg, ok = feats_of([r.path for r in rs], f"dermoscopy {s}")
        rs = [r for r, good in zip(rs, ok) if good]
        f_in[s], lg_in[s], sets_in[s] = f, lg, np.array([r.dataset for r in rs])
        e = np.exp(lg - lg.max(axis=1, keepdims=True))
        p_in[s] = (e / e.sum(axis=1, keepdims=True))[:, mal].sum(axis=1)
        y_in[s] = np.array([int(r.malignant) for r in rs])
    ood_split = {s: [o for o in ood_rows if o["split"] == s] for s in ("train", "val", "test")}
    f_ood, lg_ood, kinds_ood = {}, {}, {}
    for s, os_ in ood_split.items():
        f, lg, ok = feats_of([o["path"] for o in os_], f"out-of-distribution {s}")
        os_ = [o for o, good in zip(os_, ok) if good]
        f_ood[s], lg_ood[s], kinds_ood[s] = f, lg, np.array([o["kind"] for o in os_])
    f_rend, lg_rend, _ = feats_of([im for _, im in rendered], "rendered")
    kinds_rend = np.array([f"rendered-{k}" for k, _ in rendered])
    # rendered images join train (fit) and val (their own rows, never mixed with the real photos' rates)
    f_ood_fit = np.concatenate([f_ood["train"], f_rend[:n_fit]])
    f_ood["val"] = np.concatenate([f_ood["val"], f_rend[n_fit:]])
    lg_ood["val"] = np.concatenate([lg_ood["val"], lg_rend[n_fit:]])
    kinds_ood["val"] = np.concatenate([kinds_ood["val"], kinds_rend[n_fit:]])

    threshold_p = metadata.threshold

    def p_of(lg: np.ndarray) -> np.ndarray:
        e = np.exp(lg - lg.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True))[:, mal].sum(axis=1)

    def judged(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], cols: np.ndarray) -> dict[str, Any]:
        t = pick_threshold(fn(f_in["val"][:, cols], lg_in["val"]), sets_in["val"])
        return {split: rates(fn(f_in[split][:, cols], lg_in[split]), sets_in[split],
                             fn(f_ood[split][:, cols], lg_ood[split]), kinds_ood[split], p_of(lg_ood[split]), t,
                             threshold_p) for split in ("val", "test")}

    every = np.arange(f_tr.shape[1])
    results: dict[str, Any] = {"msp": judged(lambda f, lg: msp(lg), every),
                               "energy": judged(lambda f, lg: energy(lg), every)}
    fitted: dict[str, tuple[list[int], np.ndarray, dict[str, Any]]] = {}
    for suffix, layers in feature_sets.items():
        cols = _columns(layers, taps, tap_widths, width)
        mean = f_tr[:, cols].mean(axis=0)
        maha = fit_mahalanobis(f_tr[:, cols], cls_tr, mean, k)
        probe = fit_probe(f_ood_fit[:, cols], f_tr[:, cols], mean)
        scores = _component_scores(mean, maha, probe)
        _standardise(maha, scores["mahalanobis"](f_in["val"][:, cols], None), sets_in["val"])
        _standardise(probe, scores["probe"](f_in["val"][:, cols], None), sets_in["val"])
        z = _standardised(scores, maha, probe)
        for name, fn in (("mahalanobis", scores["mahalanobis"]), ("probe", scores["probe"]),
                         ("mahalanobis + probe", lambda f, lg, z=z: np.maximum(z["mahalanobis"](f, lg),
                                                                                z["probe"](f, lg)))):
            results[name + suffix] = judged(fn, cols)
            fitted[name + suffix] = (layers, cols, {"mean": mean, "maha": maha, "probe": probe, "z": z, "fn": fn})
    chosen = _choose(results, list(fitted)) if use == "auto" else use
    if chosen not in fitted:
        raise ValueError(f"cannot build a gate from {chosen!r}; choose one of: {', '.join(fitted)}")
    layers, cols, part = fitted[chosen]
    base_name = chosen.split(" [")[0]
    comps = ["mahalanobis", "probe"] if base_name == "mahalanobis + probe" else [base_name]
    # held-out classes: the chosen features' probe refitted without half the clinical classes, judged on the others
    results["probe, unseen clinical classes (val)"] = _unseen_classes(
        f_tr[:, cols], {key: v[:, cols] for key, v in f_ood.items()}, f_rend[:n_fit][:, cols], part["mean"], ood_split,
        f_in["val"][:, cols], sets_in["val"], lg_ood, p_of, threshold_p)
    gate = {"use": comps, "layers": list(layers), "feature_mean": part["mean"].astype(np.float32),
            "mahalanobis": part["maha"], "probe": part["probe"]}
    # the chosen score as the graph computes it (standardised), judged like every candidate: its val threshold
    validated = judged(part["fn"] if len(comps) == 2 else part["z"][comps[0]], cols)
    threshold = float(1.0 / (1.0 + np.exp(-validated["val"]["threshold"])))
    for split in validated.values():
        split["threshold"] = threshold
    feature_text = f"penultimate ({width})" + "".join(
        f" + stage {i} mean ({w})" for i, w in zip(taps, tap_widths) if i in layers)
    details = {"features": f"{feature_text}, mean of the test-time views", "components": comps,
               "layers": list(layers), "mahalanobis_k": part["maha"]["k"], "shrinkage": part["maha"]["shrinkage"],
               "probe_l2": part["probe"]["l2"],
               "fit": {"dermoscopy_train": int(len(f_tr)), "ood_train": int(len(f_ood["train"])),
                       "rendered_train": int(n_fit), "rendered_val": int(n_rendered - n_fit)},
               "rule": f"smallest threshold rejecting <= {100 * VAL_REJECT_BUDGET:g} % of every dermoscopy val set "
                       f"with >= {MIN_SET_IMAGES} images and of them pooled",
               "chosen_by": "val: fewest val out-of-distribution images reaching benign/ within the rejection budget"}
    spec_gate = GateSpec(method="+".join(comps), threshold=threshold, details=details, validated=validated)
    write_gated(ckpt, gate, spec_gate, metadata, out)
    report_dir.mkdir(parents=True, exist_ok=True)
    payload = {"chosen": chosen, "threshold": threshold, "candidates": results, "validated": validated,
               "details": details}
    summary_json(report_dir / "gate-candidates.json", payload)
    (report_dir / "gate-candidates.md").write_text(candidates_markdown(payload))
    echo(f"gate: {chosen}, threshold {threshold:.4f}; wrote {out} and {report_dir}/gate-candidates.md")
    return payload


def candidate_feature_sets(n_stages: int) -> dict[str, list[int]]:
    """The feature sets compared on val, by the suffix their candidates' names get: the penultimate features
    alone (no suffix) and, where the backbone has them, with the means of its early and middle stages."""
    sets: dict[str, list[int]] = {"": []}
    if n_stages >= 7:
        sets[" [+ stages 1-3]"] = [1, 2, 3]
        sets[" [+ stages 1-5]"] = [1, 2, 3, 4, 5]
    return sets


def _columns(layers: Sequence[int], taps: Sequence[int], tap_widths: Sequence[int], width: int) -> np.ndarray:
    """Columns of the extracted vector (tapped stages in order, then the penultimate) that ``layers`` uses."""
    cols, start = [], 0
    for i, w in zip(taps, tap_widths):
        if i in layers:
            cols += range(start, start + w)
        start += w
    return np.asarray(cols + list(range(start, start + width)), dtype=int)


def _component_scores(mean: np.ndarray, maha: dict[str, Any], probe: dict[str, Any]
                      ) -> dict[str, Callable[[np.ndarray, Any], np.ndarray]]:
    return {"mahalanobis": lambda f, lg: mahalanobis_distance(f, mean, maha),
            "probe": lambda f, lg: probe_score(f, mean, probe)}


def _standardised(scores: dict[str, Callable[[np.ndarray, Any], np.ndarray]], maha: dict[str, Any],
                  probe: dict[str, Any]) -> dict[str, Callable[[np.ndarray, Any], np.ndarray]]:
    """Each component's score as the graph computes it: 0 at its own val operating point."""
    return {name: (lambda f, lg, fn=scores[name], part=part: (fn(f, lg) - part["offset"]) * part["scale"])
            for name, part in (("mahalanobis", maha), ("probe", probe))}


def _unseen_classes(f_tr, f_ood, f_rend_fit, mean, ood_split, f_val_in, sets_val, lg_ood, p_of, threshold_p):
    train_rows = ood_split["train"][: len(f_ood["train"])]
    val_rows = ood_split["val"][: len(f_ood["val"]) - 0]
    labels = sorted({o["label"] for o in train_rows if o["kind"] == "clinical-photo"})
    halves = [labels[0::2], labels[1::2]]
    out: dict[str, Any] = {}
    for i, held in enumerate(halves):
        keep = np.array([not (o["kind"] == "clinical-photo" and o["label"] in held) for o in train_rows])
        probe = fit_probe(np.concatenate([f_ood["train"][keep], f_rend_fit]), f_tr, mean)
        s_in = probe_score(f_val_in, mean, probe)
        t = pick_threshold(s_in, sets_val)
        vmask = np.array([o["kind"] == "clinical-photo" and o["label"] in held for o in val_rows])
        f_v = f_ood["val"][: len(val_rows)][vmask]
        p_v = p_of(lg_ood["val"][: len(val_rows)][vmask])
        s_out = probe_score(f_v, mean, probe)
        out[f"held out {', '.join(held)}"] = {
            "n": int(vmask.sum()), "auroc": metrics.auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))],
                                                              np.r_[s_in, s_out]),
            "reached_benign": int(((s_out < t) & (p_v < threshold_p)).sum())}
    return out


def _choose(results: dict[str, Any], gateable: Sequence[str]) -> str:
    """Fewest real val OOD images reaching benign/ (then the best worst-kind AUROC) among gate-able candidates;
    on a tie, the first of ``gateable`` (the simpler features come first)."""
    def key(name: str) -> tuple[float, float]:
        ood = results[name]["val"]["ood"]
        real = [v for k, v in ood.items() if not k.startswith("rendered")]
        return (sum(v["reached_benign"] for v in real) / max(1, sum(v["n"] for v in real)),
                -min(v["auroc"] or 0 for v in ood.values()))
    return min(gateable, key=key)


def candidates_markdown(payload: dict[str, Any]) -> str:
    lines = ["# Not-dermoscopy gate: candidates side by side", "",
             "Each candidate's threshold: " + payload["details"]["rule"] + " (val only). "
             "\"to benign\": out-of-distribution images that pass the gate and have p(malignant) below the model's "
             "threshold. Test figures are reported, never used to choose.", ""]
    for split in ("val", "test"):
        lines += [f"## {split}", "", "| candidate | dermoscopy rejected per set | out-of-distribution per kind |",
                  "|---|---|---|"]
        for name, r in payload["candidates"].items():
            if split in r:
                lines.append(_fmt_rates(name, r[split]))
        lines.append("")
    unseen = payload["candidates"].get("probe, unseen clinical classes (val)", {})
    if unseen:
        lines += ["## The probe on clinical classes it never saw (val)", "", "| held out | n | AUROC | to benign |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['auroc']:.3f} | {v['reached_benign']} |" for k, v in unseen.items()]
        lines.append("")
    lines += [f"Chosen: **{payload['chosen']}**, gate threshold {payload['threshold']:.4f} "
              f"({payload['details']['chosen_by']})."]
    return "\n".join(lines) + "\n"
