"""k-fold cross-validation on the training split: ``volnas cv``.

With a small validation split (AdrenalMNIST3D's has 98 scans) one AUC has a standard error
of about 0.06, too wide to choose between two settings whose difference is 0.02-0.05.
Cross-validation scores every training scan once instead. Each fold is an ordinary run
folder (``fold1`` ... ``foldK``, resumable) whose ``val`` split is that fold's patients and
whose ``train`` split the other folds'; the dataset's own validation and test scans are not
read. Every fold trains the same fixed number of epochs and its held-out scans are predicted
by the final weights, so the held-out scans choose nothing. The folds depend only on the
patients, labels and ``cv_seed``, so runs of different models on one dataset pair up scan
by scan (``benchmarks/paired_compare.py`` reads a CV folder as it reads a run).

The folder::

    config.yaml            the settings every fold trains with
    cv.json                folds, seed, per-fold AUC, and the pooled metrics (``oof``)
    predictions_oof.csv    every training scan's held-out prediction, in the split's order
    fold1/ ... foldK/      the folds' runs (predictions_fold.csv: the held-out scans)
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from volnas.core.files import atomic_write_text
from volnas.core.markup import make_console
from volnas.data.dataset import open_source
from volnas.training.config import CVFold, TrainConfig, dump_config
from volnas.training.metrics import ci_record, compute_metrics
from volnas.training.run import FOLD_PREDICTIONS, run_training
from volnas.training.rundir import (
    RunDirError,
    check_start,
    prepare_run_dir,
    resumed_config,
    run_dir_held,
)

FOLDS = 5
CV_FILE = "cv.json"
OOF_FILE = "predictions_oof.csv"


def run_cv(
    cfg: TrainConfig,
    out: Path,
    folds: int | None = None,
    *,
    cv_seed: int | None = None,
    resume: bool = False,
    given: dict[str, Any] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train ``folds`` runs of ``cfg`` (one per fold of the training split; default
    :data:`FOLDS`), then pool their held-out predictions; returns ``cv.json``'s content.
    With ``resume`` the folder's saved settings are used (``cfg`` is not; ``given``, ``folds``
    and ``cv_seed`` may only repeat them), finished folds are kept and an interrupted one
    continues from its checkpoint."""
    console = console or make_console()
    out = Path(out)
    started = time.time()
    if resume:
        prepare_run_dir(out, resume=True)
        saved = json.loads((out / CV_FILE).read_text()) if (out / CV_FILE).is_file() else None
        if saved is None:
            raise RunDirError(f"{out}: not a cross-validation folder (no {CV_FILE})")
        cfg = resumed_config(out, given)
        for name, value in (("folds", folds), ("cv_seed", cv_seed)):
            if value is not None and value != saved[name]:
                raise ValueError(f"{out}: {name} {value} given at resume; the folder was "
                                 f"made with {saved[name]}")
        folds, cv_seed = int(saved["folds"]), int(saved["cv_seed"])
    else:
        folds = FOLDS if folds is None else folds
        cv_seed = 0 if cv_seed is None else cv_seed
        if cfg.cv_fold is not None:
            raise ValueError("cv_fold is set by volnas cv for each fold; leave it unset")
        if folds < 2:
            raise ValueError(f"--folds {folds}: cross-validation needs at least 2 folds")
        check_start(cfg)
        open_source(cfg.data).fold(folds, 0, cv_seed)  # bad data or too few patients: now
        prepare_run_dir(out, resume=False)
    with run_dir_held(out):
        if not resume:
            atomic_write_text(out / "config.yaml", dump_config(cfg))
            atomic_write_text(out / CV_FILE, json.dumps(
                {"folds": folds, "cv_seed": cv_seed, "finished": False}, indent=2))
        for index in range(folds):
            fold_dir = out / f"fold{index + 1}"
            if (fold_dir / FOLD_PREDICTIONS).is_file():
                continue
            console.print(f"[bold]fold {index + 1} of {folds}[/]")
            again = (fold_dir / "checkpoint" / "last.json").is_file()
            fold_cfg = cfg.model_copy(update={
                "cv_fold": CVFold(folds=folds, index=index, seed=cv_seed)})
            run_training(fold_cfg, fold_dir, resume=again,
                         given=_safe(given) if again else None, console=console, test=False)
        summary = summarize(out, cfg, folds, cv_seed)
        summary["seconds"] = round(time.time() - started, 2)
        atomic_write_text(out / CV_FILE, json.dumps(summary, indent=2))
    oof = summary["oof"]
    console.print(f"cross-validation, {folds} folds of the training split ({oof['n_scans']} "
                  f"scans): AUC {oof['auc']:.4f} pooled "
                  f"[{oof['ci']['auc'][0]:.4f}, {oof['ci']['auc'][1]:.4f}], per fold "
                  f"{summary['fold_auc_mean']:.4f} +- {summary['fold_auc_std']:.4f}")
    return summary


def _safe(given: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a resume may pass on to a fold: the settings that cannot change a result."""
    if not given:
        return None
    return {k: v for k, v in given.items() if k in ("device", "num_workers", "cache_dir")}


def summarize(out: Path, cfg: TrainConfig, folds: int, cv_seed: int) -> dict[str, Any]:
    """Pool the folds' held-out predictions into ``predictions_oof.csv`` (in the training
    split's order) and score them: per fold, and pooled with a patient bootstrap interval."""
    source = open_source(cfg.data)
    order = {r.scan_id: i for i, r in enumerate(source.split("train"))}
    rows: list[dict[str, str]] = []
    fold_auc: list[float | None] = []
    classes = source.class_names
    for index in range(folds):
        path = out / f"fold{index + 1}" / FOLD_PREDICTIONS
        with path.open(newline="") as f:
            part = list(csv.DictReader(f))
        y, p = _arrays(part, classes)
        fold_auc.append(compute_metrics(y, p, classes, source.positive_class)["auc"])
        rows += [r | {"fold": str(index + 1)} for r in part]
    missing = set(order) - {r["scan_id"] for r in rows}
    if missing or len(rows) != len(order):
        raise RunDirError(f"{out}: the folds' predictions do not cover the training split once "
                          f"({len(rows)} rows for {len(order)} scans)")
    rows.sort(key=lambda r: order[r["scan_id"]])
    y, p = _arrays(rows, classes)
    metrics = compute_metrics(y, p, classes, source.positive_class)
    metrics.update(ci_record(y, p, classes, metrics["positive_class"],
                             [r["patient_id"] for r in rows]))
    run_info = json.loads((out / "fold1" / "run.json").read_text())
    metrics.update({k: run_info[k] for k in ("params", "model_size_mb", "flops_per_scan") if k in run_info})
    metrics.update({"split": "train (held-out folds)", "model": cfg.model})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / OOF_FILE, buf.getvalue())
    scored = [a for a in fold_auc if a is not None]
    return {
        "folds": folds, "cv_seed": cv_seed, "finished": True, "model": cfg.model,
        "epochs": cfg.epochs, "seed": cfg.seed, "data": cfg.data,
        "fold_auc": fold_auc,
        "fold_auc_mean": statistics.mean(scored) if scored else None,
        "fold_auc_std": statistics.stdev(scored) if len(scored) > 1 else 0.0,
        "oof": metrics,
    }


def _arrays(rows: list[dict[str, str]], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.array([classes.index(r["label"]) for r in rows])
    p = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    return y, p
