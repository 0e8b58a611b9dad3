"""``dermsort train`` and ``dermsort evaluate`` (routed here lazily by dermsort/cli.py)."""

from __future__ import annotations

from pathlib import Path

import click

_split_options = [
    click.option("--split-mode", "--split", "split_mode", type=click.Choice(["given", "regroup"]), default="given",
                 show_default=True, help="given: keep a source's own split column; regroup: new grouped split."),
    click.option("--folds", type=click.IntRange(2, 20), default=None, help="Grouped K-fold: fold --fold is the test set."),
    click.option("--fold", type=click.IntRange(0, 19), default=0, show_default=True),
    click.option("--seed", type=int, default=0, show_default=True),
]


def _add(options):
    def wrap(func):
        for option in reversed(options):
            func = option(func)
        return func

    return wrap


@click.command()
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True),
              help="labels.csv, a data set's metadata file/folder, class folders, or a folder of data sets; repeatable.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for checkpoint.pt, metrics.json, roc.png, confusion.png.")
@click.option("--arch", "architecture", default="efficientnet_lite0", show_default=True,
              help="efficientnet_lite0 | mobilenet_v3_small | mobilenet_v3_large | efficientnet_b0 | resnet18 | resnet50 | tiny_cnn")
@click.option("--task", type=click.Choice(["binary", "ham7", "dx"]), default="binary", show_default=True,
              help="binary: benign/malignant head. dx: HAM's 7 diagnoses, p(malignant) = mel + bcc + akiec; "
                   "benign/malignant-only labels train it through a set-valued loss. ham7: dx rows only.")
@click.option("--epochs", type=click.IntRange(1, 1000), default=12, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-2, show_default=True)
@click.option("--target-sensitivity", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True,
              help="Operating threshold: the largest whose validation sensitivity reaches this.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--amp", is_flag=True, help="Mixed precision (CUDA only).")
@click.option("--freeze-backbone-epochs", type=click.IntRange(0), default=0, show_default=True,
              help="Train only the classifier for the first N epochs.")
@click.option("--freeze-stages", type=click.IntRange(0), default=0, show_default=True,
              help="Keep the first K stages (stem, early blocks) frozen for the whole run (saves CPU).")
@click.option("--max-images", type=click.IntRange(10), default=None, help="Use at most N images (quick runs).")
@click.option("--image-size", type=click.IntRange(32, 1024), default=None, help="Input size (default: the architecture's).")
@click.option("--no-pretrained", is_flag=True, help="Start from random weights.")
@click.option("--patience", type=click.IntRange(1), default=4, show_default=True, help="Early stopping on val AUC.")
@click.option("--max-minutes", type=click.FloatRange(0.1), default=None,
              help="Wall-clock budget: start no epoch that would probably end after it.")
@click.option("--balance", type=click.Choice(["sets", "loss", "sampler", "none"]), default="loss", show_default=True,
              help="sets: sample (data set, class) evenly; loss: class-weighted loss; sampler: class-weighted sampling.")
@click.option("--head-lr-mult", type=click.FloatRange(0.0, min_open=True), default=1.0, show_default=True,
              help="The classifier's learning rate is this many times --lr.")
@click.option("--label-smoothing", type=click.FloatRange(0.0, 0.5), default=0.0, show_default=True)
@click.option("--select-on", type=click.Choice(["sets", "pooled"]), default="sets", show_default=True,
              help="Epoch choice: mean val AUC inside each large val set, or one pooled val AUC.")
@click.option("--min-set-malignant", type=click.IntRange(1), default=50, show_default=True,
              help="A val set with this many malignant images joins the epoch choice and the threshold rule.")
@click.option("--tta", type=click.Choice(["none", "hflip", "flips4"]), default="none", show_default=True,
              help="Test-time flips built into the model (all are measured on val; this one ships).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="Channels-last memory layout (about 1.8x cheaper CPU training steps).")
@click.option("--workers", type=click.IntRange(0, 64), default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch CPU threads.")
@click.option("--n-boot", type=click.IntRange(100), default=2000, show_default=True, help="AUC bootstrap resamples.")
@click.option("--color-constancy", type=click.Choice(["none", "shades_of_gray"]), default="none", show_default=True,
              help="Colour constancy in the preprocessing (recorded in the model's metadata; every backend applies it).")
@click.option("--camera-augment", is_flag=True,
              help="Camera-robustness augmentations: white balance, blur, JPEG re-compression, rescaling, vignette.")
@click.option("--ema", "ema_decay", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True,
              help="Exponential moving average of the weights (e.g. 0.998); val, epoch choice and export use the average.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT/last.pt (same settings).")
@_add(_split_options)
def train(data, out, architecture, task, epochs, batch_size, lr, weight_decay, target_sensitivity, device, amp,
          freeze_backbone_epochs, freeze_stages, max_images, image_size, no_pretrained, patience, max_minutes, balance, workers,
          threads, n_boot, resume, split_mode, folds, fold, seed, head_lr_mult, label_smoothing, select_on, min_set_malignant,
          tta, channels_last, color_constancy, camera_augment, ema_decay) -> None:
    """Train a triage model; pick the epoch and the threshold on val, report on test (never trained on)."""
    from .dataset import CAMERA_AUGMENT
    from .trainer import TrainConfig
    from .trainer import train as run_training

    config = TrainConfig(data=[str(d) for d in data], out=str(out), architecture=architecture, task=task,
                         epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                         target_sensitivity=target_sensitivity, device=device, amp=amp,
                         freeze_backbone_epochs=freeze_backbone_epochs, freeze_stages=freeze_stages,
                         max_images=max_images, image_size=image_size, pretrained=not no_pretrained,
                         split_mode=split_mode, folds=folds, fold=fold, patience=patience, max_minutes=max_minutes, balance=balance,
                         workers=workers, threads=threads, n_boot=n_boot, resume=resume,
                         head_lr_mult=head_lr_mult, label_smoothing=label_smoothing, select_on=select_on,
                         min_set_malignant=min_set_malignant, tta=tta, channels_last=channels_last,
                         color_constancy=color_constancy, ema_decay=ema_decay,
                         augment=dict(CAMERA_AUGMENT) if camera_augment else {})
    try:
        run_training(config)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True),
              help="Labelled data (as for train); repeatable.")
@click.option("--split", "split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--backend", default="onnxruntime", show_default=True,
              help="Runtime backend for a bundle (onnxruntime, openvino, torch, tensorrt).")
@click.option("--artifact", default=None, help="Artifact name in the bundle (default: its reference ONNX).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Override the model's operating threshold.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True,
              help="For a checkpoint.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--n-boot", type=click.IntRange(100), default=2000, show_default=True, help="AUC bootstrap resamples.")
@click.option("--split-mode", type=click.Choice(["given", "regroup"]), default="given", show_default=True)
@click.option("--folds", type=click.IntRange(2, 20), default=None)
@click.option("--fold", type=click.IntRange(0, 19), default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ood", type=click.Path(exists=True), default=None,
              help="Folder with ood.csv (non-dermoscopy images): reports how many of the same split reach benign/ "
                   "per kind and source, and the gate's AUROC and FPR at 95 % TPR.")
def evaluate(model, data, split, out, backend, artifact, threshold, device, batch_size, n_boot, split_mode, folds,
             fold, seed, ood) -> None:
    """Sensitivity, specificity, work reduction and AUC (with CIs) of MODEL (checkpoint.pt or bundle) on labelled data."""
    from .evaluate import evaluate as run_evaluation

    try:
        run_evaluation(model, [str(d) for d in data], out, split=split, split_mode=split_mode, seed=seed, folds=folds,
                       fold=fold, backend=backend, artifact=artifact, threshold=threshold, device=device,
                       batch_size=batch_size, n_boot=n_boot, ood=ood)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command("fit-gate")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True),
              help="Dermoscopy sets (folders with labels.csv): train splits fit, val splits choose, test reports.")
@click.option("--ood", required=True, type=click.Path(exists=True),
              help="Non-dermoscopy images: a folder with ood.csv (columns file, kind, label, split).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The gated checkpoint to write (export it as usual).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the candidates' comparison goes (default: next to --out).")
@click.option("--use", type=click.Choice(["auto", "mahalanobis", "probe", "mahalanobis + probe"]), default="auto",
              show_default=True, help="Which score becomes the gate (auto: the best on val).")
@click.option("--features", type=click.Choice(["auto", "penultimate"]), default="auto", show_default=True,
              help="auto: compare the penultimate features alone and with the means of early/middle stages on "
                   "val; penultimate: that one only.")
@click.option("--per-set-train", type=click.IntRange(1), default=None,
              help="At most this many dermoscopy train images per data set fit the gate (default: all of them).")
@click.option("--k", type=click.IntRange(8), default=None, help="Mahalanobis subspace dimensions (default: all).")
@click.option("--rendered", type=click.IntRange(0), default=280, show_default=True,
              help="Rendered negatives (screens, documents, patterns) added to the real non-dermoscopy photos.")
def fit_gate(checkpoint, data, ood, out, report_dir, use, features, per_set_train, k, rendered) -> None:
    """Fit the not-dermoscopy gate on a trained checkpoint: the gate then travels inside every export."""
    from .gate_fit import fit_gate as run

    try:
        run(checkpoint, [str(d) for d in data], str(ood), out, report_dir or out.parent / "gate", k=k,
            n_rendered=rendered, use=use, feature_sets={"": []} if features == "penultimate" else None,
            per_set_train=per_set_train,
            echo=click.echo)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
