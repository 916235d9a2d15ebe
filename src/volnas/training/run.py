"""A training run end to end: data -> model -> Trainer.fit -> test once -> RUN_DIR artefacts.

RUN_DIR layout::

    config.yaml            resolved configuration (defaults <- YAML <- flags)
    run.json               classes, positive class, split sizes, seed, versions, timings
    history.csv            one row per epoch
    model.safetensors      weights of the best validation epoch
    best_val_metrics.json  validation metrics of that epoch
    checkpoint/            last epoch's full state (resume)
    metrics.json           test metrics of the best checkpoint (written once, at the end)
    predictions_test.csv   per-scan probabilities on the test split
    *.png                  curves, confusion matrix, ROC
    evaluations/NAME-NNN/  one folder per later ``volnas evaluate`` (never over the above)
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from volnas.data.augment import Policy
from volnas.data.cache import StackCache
from volnas.data.dataset import DataSource, ScanDataset, make_loader, open_source
from volnas.models.genotype import Genotype
from volnas.models.profile import count_flops, count_params, size_mb
from volnas.models.registry import check_model_name, create_model
from volnas.training.checkpoint import (
    atomic_write_text,
    checkpoint_epoch,
    load_model_state,
    remove_stale_temporaries,
    sha256_file,
)
from volnas.training.config import TrainConfig, dump_config, load_config, resume_config
from volnas.training.device import resolve_device, seed_everything
from volnas.training.distributed import broadcast_object, init_distributed
from volnas.training.distributed import info as dist_info
from volnas.training.metrics import compute_metrics
from volnas.training.plots import plot_confusion, plot_history, plot_roc
from volnas.training.trainer import Trainer


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked (exists without --resume, or is not a run)."""


GENOTYPE_PREFIX = "genotype:"


def pin_genotype(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """Copy a ``genotype:FILE`` model into the run folder so the run stands on its own."""
    if not cfg.model.startswith(GENOTYPE_PREFIX):
        return cfg
    src = Path(cfg.model[len(GENOTYPE_PREFIX):])
    local = run_dir / "genotype.json"
    if not src.is_absolute() and not src.exists() and (run_dir / src).exists():
        src = run_dir / src
    if src.resolve() != local.resolve():
        Genotype.load(src).save(local)
    return cfg.model_copy(update={"model": GENOTYPE_PREFIX + "genotype.json"})


def pin_augment(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """Copy the training policy into the run folder: an --augment file, or with ``auto`` the
    policy a searched genotype carries. The run then names ``augment_policy.json``."""
    local = run_dir / "augment_policy.json"
    if cfg.augment == "auto" and cfg.model.startswith(GENOTYPE_PREFIX):
        geno = Genotype.load(run_dir / cfg.model[len(GENOTYPE_PREFIX):])
        policy = geno.extra.get("augment_policy")
        if policy is None:
            return cfg
        Policy.from_json(policy, source=cfg.model).save(local)
    elif cfg.augment not in ("auto", "none", "flip"):
        src = Path(cfg.augment)
        if not src.is_file() and (run_dir / src).is_file():
            src = run_dir / src
        if src.resolve() != local.resolve():
            Policy.load(src).save(local)
    else:
        return cfg
    return cfg.model_copy(update={"augment": local.name})


def build_model(name: str, num_classes: int, run_dir: Path | None = None) -> torch.nn.Module:
    """A registry model; ``genotype:FILE`` paths are looked up in ``run_dir`` first."""
    if name.startswith(GENOTYPE_PREFIX) and run_dir is not None:
        path = Path(name[len(GENOTYPE_PREFIX):])
        if not path.is_absolute() and (Path(run_dir) / path).exists():
            return Genotype.load(Path(run_dir) / path).build(1, num_classes)
    return create_model(name, in_channels=1, num_classes=num_classes)


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite an earlier run; ``resume`` requires one (rank 0 decides)."""
    error = None
    if dist_info().is_main:
        try:
            _prepare_run_dir(run_dir, resume)
        except RunDirError as e:
            error = str(e)
    error = broadcast_object(error)
    if error:
        raise RunDirError(error)


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise RunDirError(f"{run_dir}: nothing to resume (no config.yaml)")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(
            f"{run_dir}: already holds a run; choose another --out or pass --resume"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def build_datasets(
    cfg: TrainConfig, source: DataSource, splits: tuple[str, ...]
) -> dict[str, ScanDataset]:
    cache = StackCache(cfg.preprocess, Path(cfg.cache_dir) if cfg.cache_dir else None)
    return {
        s: ScanDataset(source.split(s), source.class_names, cfg.preprocess,
                       train=(s == "train"), cache=cache, seed=cfg.seed)
        for s in splits
    }


def positive_of(cfg: TrainConfig, source: DataSource) -> str | None:
    pos = cfg.positive_class or source.positive_class
    if pos is not None and pos not in source.class_names:
        raise ValueError(f"positive class {pos!r} is not one of {source.class_names}")
    return pos


def model_profile(model: torch.nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    return {
        "params": count_params(model),
        "model_size_mb": size_mb(model),
        "flops_per_scan": count_flops(model, cfg.preprocess.input_shape),
    }


def epochs_seconds(history: list[dict[str, Any]]) -> float:
    """Sum of the epochs' wall times (training, BN recalibration, validation) in a history."""
    return float(sum(float(r["seconds"]) for r in history if r.get("seconds") not in (None, "")))


def history_seconds(run_dir: Path) -> float | None:
    """``epochs_seconds`` of RUN_DIR/history.csv, summed over resumes; None without one."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return epochs_seconds(list(csv.DictReader(f)))


def check_model(name: str) -> None:
    """Refuse an unknown model name, or a ``genotype:FILE`` that is missing or does not
    parse, before any data is loaded or folder made; the error lists the valid names."""
    if name.startswith(GENOTYPE_PREFIX):
        Genotype.load(Path(name[len(GENOTYPE_PREFIX):]))  # its errors name the file
        return
    check_model_name(name)


def check_augment(augment: str) -> None:
    """Refuse an ``--augment`` that is neither a mode nor a readable policy file."""
    if augment in ("auto", "none", "flip"):
        return
    path = Path(augment)
    if not path.is_file():
        raise ValueError(f"{path}: augmentation policy file not found "
                         "(--augment takes auto, none, flip or a policy JSON file)")
    Policy.load(path)


def check_start(cfg: TrainConfig, *, model_given: bool = False) -> None:
    """Everything about a new run that can be checked before its folder is made."""
    if not cfg.data:
        raise ValueError("no data: pass --data (or set `data:` in --config)")
    if not model_given:
        check_model(cfg.model)
    check_augment(cfg.augment)


def resumed_config(run_dir: Path, given: dict[str, Any] | None) -> TrainConfig:
    """The saved configuration of ``run_dir``, with what ``given`` may change at resume
    (see :func:`volnas.training.config.resume_config`); writes nothing."""
    path = Path(run_dir) / "config.yaml"
    saved = load_config(path, {})
    finished = checkpoint_epoch(Path(run_dir) / "checkpoint")
    return resume_config(saved, given or {}, path, finished_epochs=finished)


def remove_failed_start(run_dir: Path, existed: bool) -> None:
    """Delete what a new run made before it failed: the folder if this start created it,
    else its contents (a new run starts only in an empty folder, so all of it is this run's)."""
    if not existed:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for child in run_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def run_training(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    given: dict[str, Any] | None = None,
    console: Console | None = None,
    test: bool = True,
    model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Train, pick the best validation checkpoint, test it once; returns the test metrics.

    With ``resume`` the run continues its saved configuration and ``cfg`` is not used:
    ``given`` holds the settings set at resume (YAML and flags, no defaults); those that
    would change the result are refused before anything is written. A new run that fails
    before its first checkpoint removes what it made, so the same ``run_dir`` can be retried.
    With ``test=False`` (architecture probes) the test split is not touched and the best
    validation metrics are returned instead. ``model`` overrides building ``cfg.model``.
    """
    console = console or Console()
    run_dir = Path(run_dir)
    init_distributed(cfg.device)
    existed = run_dir.exists()
    if resume:
        prepare_run_dir(run_dir, resume)
        saved_epochs = load_config(run_dir / "config.yaml", {}).epochs
        cfg = resumed_config(run_dir, given)
        if dist_info().is_main:
            remove_stale_temporaries(run_dir)
        return _train(cfg, run_dir, resume=True, console=console, test=test, model=model,
                      saved_epochs=saved_epochs)
    check_start(cfg, model_given=model is not None)
    prepare_run_dir(run_dir, resume)
    try:
        return _train(cfg, run_dir, resume=False, console=console, test=test, model=model)
    except Exception:
        if dist_info().is_main and not (run_dir / "checkpoint" / "last.json").exists():
            remove_failed_start(run_dir, existed)
        raise


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    console: Console,
    test: bool,
    model: torch.nn.Module | None,
    saved_epochs: int | None = None,
) -> dict[str, Any]:
    if not resume:  # a resumed run's files are pinned already
        if dist_info().is_main:
            if model is None:
                cfg = pin_genotype(cfg, run_dir)
            cfg = pin_augment(cfg, run_dir)
        cfg = broadcast_object(cfg)
    seed_everything(cfg.seed)
    source = open_source(cfg.data)
    positive = positive_of(cfg, source)
    ds = build_datasets(cfg, source, ("train", "val"))
    train_loader = make_loader(ds["train"], cfg.batch_size, train=True,
                               num_workers=cfg.num_workers, seed=cfg.seed)
    val_loader = make_loader(ds["val"], cfg.batch_size, train=False, num_workers=cfg.num_workers)
    if model is None:
        model = build_model(cfg.model, len(source.class_names), run_dir)
    device = resolve_device(cfg.device)
    extended = _extensions(run_dir) if resume else []
    if saved_epochs is not None and cfg.epochs != saved_epochs:
        extended.append({"from_epochs": saved_epochs, "to_epochs": cfg.epochs})
    info = {
        "classes": source.class_names,
        "positive_class": positive,
        "data": str(cfg.data),
        "n_train": len(ds["train"]),
        "n_val": len(ds["val"]),
        "seed": cfg.seed,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        **model_profile(model, cfg),
        **({"extended": extended} if extended else {}),
    }
    if dist_info().is_main:
        text = dump_config(cfg)
        path = run_dir / "config.yaml"
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
        atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2))
    else:
        console = Console(quiet=True)
    console.print(
        f"[bold]{escape(cfg.model)}[/]: {info['params']:,} params ({info['model_size_mb']:.2f} MB), "
        f"input {cfg.preprocess.input_shape}, {len(ds['train'])} train / {len(ds['val'])} val "
        f"scans, device {device}"
    )
    counts = [ds["train"].labels.count(i) for i in range(len(source.class_names))]
    trainer = Trainer(model, cfg, class_names=source.class_names, positive_class=positive,
                      device=device, run_dir=run_dir, console=console, class_counts=counts)
    trainer.fit(train_loader, val_loader, resume=resume)
    if dist_info().is_main:
        plot_history(trainer.history, run_dir / "curves.png", best_epoch=trainer.best_epoch)
    # The epochs' own wall times: a resumed run counts the epochs of every process, not
    # only this one's (an epoch cut off by a stop is not counted).
    train_seconds = epochs_seconds(trainer.history)
    if not test:
        best = json.loads((run_dir / "best_val_metrics.json").read_text())
        return best | {"best_epoch": trainer.best_epoch, "train_seconds": train_seconds}
    metrics = test_once(trainer, cfg, source, run_dir, console)
    metrics.update({"best_epoch": trainer.best_epoch, "train_seconds": train_seconds,
                    "world_size": dist_info().world_size})
    if dist_info().is_main:
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _extensions(run_dir: Path) -> list[dict[str, int]]:
    """The epoch extensions recorded in an earlier run.json of ``run_dir``."""
    path = run_dir / "run.json"
    try:
        return list(json.loads(path.read_text()).get("extended", []))
    except (OSError, ValueError, AttributeError):
        return []


def test_once(
    trainer: Trainer, cfg: TrainConfig, source: DataSource, run_dir: Path, console: Console
) -> dict[str, Any]:
    """Load the best checkpoint and evaluate the test split — the only time it is read."""
    load_model_state(trainer.net, run_dir / "model.safetensors")
    test = build_datasets(cfg, source, ("test",))["test"]
    loader = make_loader(test, cfg.batch_size, train=False, num_workers=cfg.num_workers)
    metrics = evaluate_and_write(trainer, test, loader, run_dir, "test")
    console.print(
        f"test ({metrics['n_scans']} scans, best epoch {trainer.best_epoch}): "
        f"acc {metrics['accuracy']:.4f}  f1 {metrics['f1']:.4f}  auc {_fmt(metrics['auc'])}"
    )
    return metrics


def evaluate_and_write(
    trainer: Trainer, dataset: ScanDataset, loader: Any, run_dir: Path, split: str
) -> dict[str, Any]:
    """Metrics, per-scan predictions and plots of one split into ``run_dir``."""
    probs, labels, loss = trainer.predict(loader)
    metrics = compute_metrics(labels, probs, trainer.class_names, trainer.positive_class)
    metrics.update({"loss": loss, "split": split, **model_profile(trainer.net, trainer.cfg)})
    if not dist_info().is_main:
        return metrics
    write_predictions(run_dir / f"predictions_{split}.csv", dataset, labels, probs,
                      trainer.class_names)
    plot_confusion(np.array(metrics["confusion_matrix"]), trainer.class_names,
                   run_dir / f"confusion_{split}.png", title=f"{split} confusion matrix")
    plot_roc(labels, probs, trainer.class_names, metrics["positive_class"],
             run_dir / f"roc_{split}.png")
    return metrics


def write_predictions(
    path: Path, dataset: ScanDataset, labels: np.ndarray, probs: np.ndarray, classes: list[str]
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["scan_id", "patient_id", "label", "predicted", *[f"p_{c}" for c in classes]])
    for row, y, p in zip(dataset.rows, labels, probs, strict=True):
        w.writerow([row.scan_id, row.patient_id, classes[int(y)], classes[int(p.argmax())],
                    *[f"{v:.6f}" for v in p]])
    atomic_write_text(path, buf.getvalue())


def load_run(run_dir: Path) -> tuple[torch.nn.Module, TrainConfig, dict[str, Any]]:
    """A finished run's best model (eval mode, CPU), its config and run.json info.

    A bundle folder (it opens as a run) is verified first, as ``load_bundle`` does: an
    edited or swapped file is refused with a ``BundleError`` (a ``ValueError``).
    """
    run_dir = Path(run_dir)
    if (run_dir / "bundle.json").is_file():
        from volnas.deploy.bundle import load_bundle

        load_bundle(run_dir)
    for name in ("config.yaml", "run.json", "model.safetensors"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: not a finished run folder (no {name})")
    cfg = load_config(run_dir / "config.yaml", {})
    info = json.loads((run_dir / "run.json").read_text())
    model = build_model(cfg.model, len(info["classes"]), run_dir)
    load_model_state(model, run_dir / "model.safetensors")
    return model.eval(), cfg, info


EVALUATIONS = "evaluations"


def evaluate_run(
    run_dir: Path,
    data: str | None,
    split: str = "test",
    console: Console | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Metrics of a finished run's best checkpoint on ``split`` of any compatible data.

    The run's own record (metrics.json, predictions_test.csv, plots) is never touched: the
    results go to ``out`` (which must not exist or be empty), by default to the next free
    ``RUN_DIR/evaluations/<data>-<split>-NNN``. The folder is written under a temporary
    name and renamed when complete; its ``evaluation.json`` names the run, data and split.
    The returned metrics carry ``evaluation_dir``.
    """
    import tempfile
    import time

    from volnas import __version__

    console = console or Console()
    run_dir = Path(run_dir)
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RunDirError(f"{out}: already exists and is not empty; choose another --out")
    model, cfg, run_info = load_run(run_dir)
    run_data = cfg.data
    if data:
        cfg = cfg.model_copy(update={"data": str(data)})
    source = open_source(cfg.data)
    if source.class_names != run_info["classes"]:
        raise ValueError(
            f"{cfg.data}: classes {source.class_names} differ from the run's {run_info['classes']}"
        )
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    trainer = Trainer(model, cfg, class_names=source.class_names,
                      positive_class=run_info.get("positive_class"),
                      device=resolve_device(cfg.device), run_dir=run_dir, console=console)
    ds = build_datasets(cfg, source, (split,))[split]
    if len(ds) == 0:
        raise ValueError(f"{cfg.data}: no scans in the {split} split")
    ds.train = False
    loader = make_loader(ds, cfg.batch_size, train=False, num_workers=cfg.num_workers)

    parent = out.parent if out is not None else run_dir / EVALUATIONS
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".evaluation.", suffix=".tmp"))
    try:
        metrics = evaluate_and_write(trainer, ds, loader, tmp, split)
        metrics["data"] = str(cfg.data)
        record = {
            "run": str(run_dir.resolve()),
            "data": str(cfg.data),
            "run_data": str(run_data),
            "same_data_as_run": _same_data(cfg.data, run_data, run_dir),
            "split": split,
            "n_scans": metrics["n_scans"],
            "weights_sha256": sha256_file(run_dir / "model.safetensors"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "volnas_version": __version__,
        }
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2))
        atomic_write_text(tmp / "evaluation.json", json.dumps(record, indent=2))
        final = _place(tmp, out, parent, f"{_slug(Path(str(cfg.data)).stem)}-{split}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    metrics["evaluation_dir"] = str(final)
    return metrics


def _same_data(data: str, run_data: str, run_dir: Path) -> bool:
    def norm(d: str) -> Path:
        p = Path(d)
        return (p if p.is_absolute() or p.exists() or not (run_dir / p).exists()
                else run_dir / p).resolve()
    return norm(str(data)) == norm(str(run_data))


def _slug(name: str) -> str:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return slug[:60] or "data"


def _place(tmp: Path, out: Path | None, parent: Path, stem: str) -> Path:
    """Rename the finished ``tmp`` folder to ``out``, or to the next free ``parent/stem-NNN``
    (never over an existing folder, even one created meanwhile by another process)."""
    if out is not None:
        if out.exists():
            out.rmdir()  # empty, checked before; a folder filled meanwhile raises here
        os.rename(tmp, out)
        return out
    i = 1
    while True:
        final = parent / f"{stem}-{i:03d}"
        if not final.exists():
            try:
                os.rename(tmp, final)  # fails if final appeared and is not empty
                return final
            except OSError:
                if not final.exists():
                    raise
        i += 1


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"
