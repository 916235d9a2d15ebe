"""``volnas models``, ``volnas train``, ``volnas cv`` and ``volnas evaluate``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from volnas.cli.common import (
    TTA,
    ClassWeight,
    Split,
    TTAChoice,
    console,
    default,
    duration_option,
    fail,
    metrics_table,
    optional_shape,
    parse_shape,
    start_run,
)
from volnas.core.markup import esc
from volnas.data.volume import DataError
from volnas.training.config import TrainConfig


def _d(field: str) -> str:
    return default(field, TrainConfig)




def models_cmd(
    input: str = typer.Option("1x32x128x128", "--input", help="Per-scan input CxDxHxW."),
    classes: int = typer.Option(3, "--classes", min=2, help="Number of classes."),
    pattern: str = typer.Option("*", "--filter", help="Glob over model names."),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Count FLOPs (slower)."),
) -> None:
    """List every registered model with parameters, size (MB) and FLOPs per scan."""
    from volnas.models.profile import count_flops, count_params, size_mb
    from volnas.models.registry import create_model, get_spec, list_models

    shape = parse_shape(input, 4, "--input")
    table = Table(title=f"models for input {input}, {classes} classes")
    for col in ("model", "family", "params", "size (MB)", "GFLOPs/scan", "description"):
        table.add_column(col, justify="right" if col in ("params", "size (MB)", "GFLOPs/scan") else "left")
    for name in list_models(pattern):
        spec = get_spec(name)
        m = create_model(name, in_channels=shape[0], num_classes=classes)
        gf = f"{count_flops(m, shape) / 1e9:.2f}" if flops else "-"
        table.add_row(name, spec.family, f"{count_params(m):,}", f"{size_mb(m):.2f}", gf,
                      esc(spec.description))
    console.print(table)


def train_cmd(
    data: str = typer.Option(None, "--data", help="Manifest CSV or MedMNIST .npz."),
    model: str = typer.Option(None, "--model", help=f"Registry name (see `volnas models`) or "
                              f"genotype:FILE {_d('model')}."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (never overwritten)."),
    epochs: int = typer.Option(None, "--epochs", help=f"Epochs {_d('epochs')}."),
    batch_size: int = typer.Option(None, "--batch-size", help=f"Batch size {_d('batch_size')}."),
    slices: int = typer.Option(None, "--slices", help=f"Slices per scan T {_d('slices')}."),
    size: str = typer.Option(None, "--size", help=f"In-plane HxW after resize/crop {_d('size')}."),
    lr: float = typer.Option(None, "--lr", help=f"Learning rate {_d('lr')}."),
    seed: int = typer.Option(None, "--seed", help=f"Seed {_d('seed')}."),
    config: Path = typer.Option(None, "--config", help="YAML config; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    device: str = typer.Option(None, "--device", help=f"auto | cpu | cuda[:N] {_d('device')}."),
    workers: int = typer.Option(None, "--workers",
                                help=f"Data loader worker processes {_d('num_workers')}."),
    augment: str = typer.Option(None, "--augment", help="auto | none | flip | POLICY.json "
                                f"{_d('augment')} (auto: a genotype's searched policy, else flip)."),
    sync_bn: bool = typer.Option(None, "--sync-bn/--no-sync-bn",
                                 help="Synchronised batch norm under torchrun (CUDA)."),
    class_weight: ClassWeight = typer.Option(
        None, "--class-weight", help=f"Loss weights; balanced: n/(k*n_c) {_d('class_weight')}."),
    tta: TTAChoice = typer.Option(
        None, "--tta", help=f"Test-time augmentation: none | flips (4x inference) | auto "
        f"(flips only if better on validation) {_d('tta')}."),
    time_budget: str = typer.Option(
        None, "--time-budget", help="Wall-clock budget of the whole run, e.g. 45m, 90s, 2h: "
        "the epochs that fit (at most --epochs) are set before the first, so the schedule "
        "ends with the budget; see run.json's time_budget."),
    operating_point: str = typer.Option(
        None, "--operating-point", help="Threshold on P(positive) chosen on validation, at "
        f"which the test reports sensitivity, specificity, PPV, NPV: youden | sensitivity:S | "
        f"specificity:S {_d('operating_point')}."),
) -> None:
    """Train a model: validation every epoch, best checkpoint by validation, test once.

    --resume continues the run in --out with its saved configuration; only --device,
    --workers (and cache_dir) may be given with it, or --epochs to extend a finished run."""
    from volnas.training.run import run_training

    overrides = {
        "data": data, "model": model, "epochs": epochs, "batch_size": batch_size,
        "slices": slices, "size": optional_shape(size, 2, "--size"),
        "lr": lr, "seed": seed, "device": device, "num_workers": workers,
        "augment": augment, "sync_bn": sync_bn, "class_weight": class_weight, "tta": tta,
        "time_budget": duration_option(time_budget), "operating_point": operating_point,
    }
    metrics = start_run(run_training, TrainConfig, config, overrides, out, resume)
    console.print(f"run folder: {esc(out)}  (metrics.json: acc {metrics['accuracy']:.4f}, "
                  f"f1 {metrics['f1']:.4f})")


def cv_cmd(
    data: str = typer.Option(None, "--data", help="Manifest CSV or MedMNIST .npz."),
    model: str = typer.Option(None, "--model", help=f"Registry name (see `volnas models`) or "
                              f"genotype:FILE {_d('model')}."),
    out: Path = typer.Option(..., "--out", "-o", help="CV folder (never overwritten)."),
    folds: int = typer.Option(None, "--folds", min=2, help="Folds of the training split [5]."),
    cv_seed: int = typer.Option(None, "--cv-seed", help="Seed of the patients' assignment to "
                                "folds; keep it the same for models you compare [0]."),
    epochs: int = typer.Option(None, "--epochs", help=f"Epochs per fold {_d('epochs')}."),
    batch_size: int = typer.Option(None, "--batch-size", help=f"Batch size {_d('batch_size')}."),
    slices: int = typer.Option(None, "--slices", help=f"Slices per scan T {_d('slices')}."),
    size: str = typer.Option(None, "--size", help=f"In-plane HxW after resize/crop {_d('size')}."),
    lr: float = typer.Option(None, "--lr", help=f"Learning rate {_d('lr')}."),
    seed: int = typer.Option(None, "--seed", help=f"Training seed {_d('seed')}."),
    config: Path = typer.Option(None, "--config", help="YAML config; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the CV in --out."),
    device: str = typer.Option(None, "--device", help=f"auto | cpu | cuda[:N] {_d('device')}."),
    workers: int = typer.Option(None, "--workers",
                                help=f"Data loader worker processes {_d('num_workers')}."),
    augment: str = typer.Option(None, "--augment", help="auto | none | flip | POLICY.json "
                                f"{_d('augment')}."),
    class_weight: ClassWeight = typer.Option(
        None, "--class-weight", help=f"Loss weights; balanced: n/(k*n_c) {_d('class_weight')}."),
) -> None:
    """Cross-validate a model on the training split: one run per fold, every training scan
    predicted once by the fold that held it out; the validation and test splits are not read.

    Use it to compare settings where the validation split is too small to tell them apart
    (the same --folds and --cv-seed give the same folds, so CV folders pair up scan by scan
    in benchmarks/paired_compare.py). Writes cv.json and predictions_oof.csv."""
    from volnas.training.cv import run_cv

    overrides = {
        "data": data, "model": model, "epochs": epochs, "batch_size": batch_size,
        "slices": slices, "size": optional_shape(size, 2, "--size"), "lr": lr, "seed": seed,
        "device": device, "num_workers": workers, "augment": augment,
        "class_weight": class_weight, "tta": "none",
    }

    def run(cfg: TrainConfig, out: Path, **kw: object) -> dict:
        return run_cv(cfg, out, folds, cv_seed=cv_seed, **kw)  # type: ignore[arg-type]

    summary = start_run(run, TrainConfig, config, overrides, out, resume)
    console.print(f"CV folder: {esc(out)}  (cv.json: pooled AUC {summary['oof']['auc']:.4f})")


def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run folder or an exported bundle."),
    data: str = typer.Option(None, "--data", help="Manifest/npz (default: the run's data)."),
    split: Split = typer.Option("test", "--split", help="Which split of the data."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Evaluation folder, must not exist or be empty "
        "[next free RUN_DIR/evaluations/<data>-<split>-NNN]."),
    tta: TTA = typer.Option(
        None, "--tta", help="Test-time augmentation, overriding the run's choice made on "
        "validation (flips: 4x inference) [the run's]."),
) -> None:
    """Metrics of a run's best checkpoint on a split of any dataset, in a folder of their own.

    The run's own metrics.json and test predictions are never changed.
    """
    from volnas.training.evaluate import evaluate_run
    from volnas.training.rundir import RunDirError

    try:
        is_bundle = (run_dir / "bundle.json").is_file()
        if is_bundle:  # verified before it is opened (an edited bundle is refused)
            from volnas.deploy.bundle import load_bundle

            load_bundle(run_dir)
        metrics = evaluate_run(run_dir, data, split, console=console, out=out,
                               bundle_verified=is_bundle, tta=tta)
    except (DataError, RunDirError, ValueError, FileNotFoundError) as e:
        fail(e)
    table = metrics_table(metrics, split)
    cal = metrics.get("calibration") or {}
    console.print(table)
    if cal.get("temperature") is not None:
        console.print(f"calibration (temperature {cal['temperature']:.3f}, fitted on validation): "
                      f"ECE {cal['ece']:.4f} -> {cal['ece_calibrated']:.4f}, Brier "
                      f"{cal['brier']:.4f} -> {cal['brier_calibrated']:.4f}")
    elif cal:
        console.print(f"ECE {cal['ece']:.4f}, Brier {cal['brier']:.4f} ({esc(cal.get('note', ''))})",
                      soft_wrap=True)
    if metrics.get("tta", "none") != "none":
        console.print(f"test-time augmentation: {esc(metrics['tta'])}")
    op = metrics.get("operating_point")
    if op:
        console.print(f"at the run's operating point ({esc(op['rule'])} on validation, P >= "
                      f"{op['threshold']:.3f}): " + ", ".join(
                          f"{k} {'n/a' if op[k] is None else format(op[k], '.4f')}"
                          for k in ("sensitivity", "specificity", "ppv", "npv")))
    console.print(f"evaluation: {esc(metrics['evaluation_dir'])}", soft_wrap=True)
