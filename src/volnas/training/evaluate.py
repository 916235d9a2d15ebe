"""Evaluating a trained model: metrics, per-scan predictions and plots of one split, and
``volnas evaluate`` (a finished run on any split of any compatible data, into its own
folder, never over the run's record)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from volnas import __version__
from volnas.core.distributed import info as dist_info
from volnas.core.files import atomic_write_text, sha256_file
from volnas.core.markup import make_console
from volnas.data.dataset import ScanDataset, make_loader, open_source
from volnas.training.device import resolve_device
from volnas.training.metrics import compute_metrics
from volnas.training.plots import plot_confusion, plot_roc
from volnas.training.rundir import (
    RunDirError,
    build_datasets,
    load_run,
    model_profile,
)
from volnas.training.trainer import Trainer


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


EVALUATIONS = "evaluations"


def evaluate_run(
    run_dir: Path,
    data: str | None,
    split: str = "test",
    console: Console | None = None,
    out: Path | None = None,
    *,
    bundle_verified: bool = False,
) -> dict[str, Any]:
    """Metrics of a finished run's best checkpoint on ``split`` of any compatible data.

    The run's own record (metrics.json, predictions_test.csv, plots) is never touched: the
    results go to ``out`` (which must not exist or be empty), by default to the next free
    ``RUN_DIR/evaluations/<data>-<split>-NNN``. The folder is written under a temporary
    name and renamed when complete; its ``evaluation.json`` names the run, data and split.
    The returned metrics carry ``evaluation_dir``. A verified bundle (``bundle_verified``,
    see :func:`volnas.training.rundir.load_run`) is never written into: its evaluations go
    to ``./evaluations/`` unless ``out`` says otherwise.
    """
    console = console or make_console()
    run_dir = Path(run_dir)
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RunDirError(f"{out}: already exists and is not empty; choose another --out")
    model, cfg, run_info = load_run(run_dir, bundle_verified=bundle_verified)
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

    parent = (out.parent if out is not None
              else (Path.cwd() if bundle_verified else run_dir) / EVALUATIONS)
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
