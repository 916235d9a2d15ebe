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
from volnas.training.metrics import (
    apply_temperature,
    calibration_summary,
    ci_record,
    compute_metrics,
    operating_point_metrics,
)
from volnas.training.plots import plot_confusion, plot_reliability, plot_roc
from volnas.training.rundir import (
    RunDirError,
    build_datasets,
    load_run,
    model_profile,
)
from volnas.training.trainer import Trainer
from volnas.training.tta import TTA_MODES, predict_tta


def evaluate_and_write(
    trainer: Trainer, dataset: ScanDataset, loader: Any, run_dir: Path, split: str,
    temperature: float | None = None, tta: str = "none", *, operating: dict | None = None,
) -> dict[str, Any]:
    """Metrics, per-scan predictions and plots of one split into ``run_dir``.

    ``tta`` (:mod:`volnas.training.tta`) makes the model's probabilities the mean over its
    views; the temperature is applied after it. The metrics record it as ``tta``.

    The metrics are those of the model's own (raw) probabilities, each with a bootstrap
    interval over patients (``ci``); ``calibration`` adds ECE, Brier score and NLL, raw and,
    with a ``temperature`` (fitted on validation), calibrated, and the AUCs of the
    calibrated probabilities (the argmax metrics cannot change). The predictions CSV then
    holds the calibrated probabilities as ``p_<class>`` and the raw ones as ``p_raw_<class>``.
    ``operating`` (the run's validation operating point, :func:`read_operating_point`) adds
    ``operating_point``: sensitivity, specificity, PPV and NPV of the (calibrated)
    P(positive) >= its threshold, with intervals, and a ``positive_at_threshold`` column.
    """
    probs, labels, loss = predict_tta(trainer, loader, tta)
    metrics = compute_metrics(labels, probs, trainer.class_names, trainer.positive_class)
    groups = [row.patient_id for row in dataset.rows]
    metrics.update(ci_record(labels, probs, trainer.class_names, metrics["positive_class"],
                             groups))
    calibration = calibration_summary(labels, probs, temperature)
    calibrated = None
    if temperature is not None:
        calibrated = apply_temperature(probs, temperature)
        cal = compute_metrics(labels, calibrated, trainer.class_names, trainer.positive_class)
        calibration.update({"auc_calibrated": cal["auc"],
                            "auc_macro_ovr_calibrated": cal["auc_macro_ovr"]})
    else:
        calibration["note"] = ("uncalibrated: the run has no calibration.json (trained before "
                               "volnas fitted a temperature)")
    metrics.update({"loss": loss, "split": split, "tta": tta, "calibration": calibration,
                    **model_profile(trainer.net, trainer.cfg)})
    threshold = None
    if operating:
        threshold = float(operating["threshold"])
        metrics["operating_point"] = {
            "rule": operating["rule"], "chosen_on": "val",
            "probabilities": "calibrated" if calibrated is not None else "raw",
            **operating_point_metrics(labels, probs if calibrated is None else calibrated,
                                      trainer.class_names, metrics["positive_class"], threshold,
                                      groups)}
    if not dist_info().is_main:
        return metrics
    write_predictions(run_dir / f"predictions_{split}.csv", dataset, labels, probs,
                      trainer.class_names, calibrated=calibrated, temperature=temperature,
                      threshold=threshold, positive=metrics["positive_index"])
    plot_confusion(np.array(metrics["confusion_matrix"]), trainer.class_names,
                   run_dir / f"confusion_{split}.png", title=f"{split} confusion matrix")
    plot_roc(labels, probs, trainer.class_names, metrics["positive_class"],
             run_dir / f"roc_{split}.png")
    plot_reliability(labels, probs, run_dir / f"reliability_{split}.png",
                     title=f"{split} reliability", calibrated=calibrated)
    return metrics


def write_predictions(
    path: Path, dataset: ScanDataset, labels: np.ndarray, probs: np.ndarray, classes: list[str],
    *, calibrated: np.ndarray | None = None, temperature: float | None = None,
    threshold: float | None = None, positive: int | None = None,
) -> None:
    """One line per scan. With ``calibrated`` probabilities, ``p_<class>`` holds them, the
    ``temperature`` column says by which temperature, and ``p_raw_<class>`` the model's own.
    With a ``threshold``, ``positive_at_threshold`` is 1 where p_<positive> >= it."""
    buf = io.StringIO()
    w = csv.writer(buf)
    shown = probs if calibrated is None else calibrated
    head = ["scan_id", "patient_id", "label", "predicted", *[f"p_{c}" for c in classes]]
    if calibrated is not None:
        head += ["temperature", *[f"p_raw_{c}" for c in classes]]
    if threshold is not None:
        head += ["threshold", "positive_at_threshold"]
    w.writerow(head)
    for i, (row, y) in enumerate(zip(dataset.rows, labels, strict=True)):
        p = shown[i]
        line = [row.scan_id, row.patient_id, classes[int(y)], classes[int(p.argmax())],
                *[f"{v:.6f}" for v in p]]
        if calibrated is not None:
            line += [f"{temperature:.6g}", *[f"{v:.6f}" for v in probs[i]]]
        if threshold is not None and positive is not None:
            line += [f"{threshold:.6g}", int(p[positive] >= threshold)]
        w.writerow(line)
    atomic_write_text(path, buf.getvalue())


EVALUATIONS = "evaluations"
CALIBRATION = "calibration.json"


def read_temperature(run_dir: Path) -> float | None:
    """The temperature of RUN_DIR/calibration.json; None when the run has none (older runs).

    A file that is there but unreadable, or whose temperature is not a positive number, is
    an error naming the file (never silently uncalibrated)."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        return None
    try:
        t = json.loads(path.read_text())["temperature"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{path}: not a calibration record with a temperature ({e})") from e
    if isinstance(t, bool) or not isinstance(t, int | float) or not (0 < t < float("inf")):
        raise RunDirError(f"{path}: temperature must be a positive number, got {t!r}")
    return float(t)


def read_operating_point(run_dir: Path) -> dict[str, Any] | None:
    """The operating point chosen on validation (RUN_DIR/calibration.json), or None for a
    run without one (trained before volnas chose one, or a one-sided validation split)."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        return None
    try:
        op = json.loads(path.read_text()).get("operating_point")
        if op is None:
            return None
        t = op["threshold"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {t!r}")
        return {"rule": str(op["rule"]), "threshold": float(t)}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, KeyError, TypeError) as e:
        raise RunDirError(f"{path}: not a valid operating point ({e})") from e


def read_tta(run_dir: Path) -> str:
    """The test-time augmentation chosen on validation, from RUN_DIR/calibration.json;
    ``none`` for runs without the record (trained before volnas chose one). A recorded
    value that is not a known mode is an error naming the file."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        return "none"
    try:
        record = json.loads(path.read_text())
        mode = record.get("tta", "none")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise RunDirError(f"{path}: not a calibration record ({e})") from e
    if mode not in TTA_MODES:
        raise RunDirError(f"{path}: tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return str(mode)


def evaluate_run(
    run_dir: Path,
    data: str | None,
    split: str = "test",
    console: Console | None = None,
    out: Path | None = None,
    *,
    bundle_verified: bool = False,
    tta: str | None = None,
) -> dict[str, Any]:
    """Metrics of a finished run's best checkpoint on ``split`` of any compatible data.

    The run's own record (metrics.json, predictions_test.csv, plots) is never touched: the
    results go to ``out`` (which must not exist or be empty), by default to the next free
    ``RUN_DIR/evaluations/<data>-<split>-NNN``. The folder is written under a temporary
    name and renamed when complete; its ``evaluation.json`` names the run, data and split.
    The returned metrics carry ``evaluation_dir``. The run's recorded test-time
    augmentation (:func:`read_tta`) is used unless ``tta`` overrides it; evaluation.json
    records both. A verified bundle (``bundle_verified``,
    see :func:`volnas.training.rundir.load_run`) is never written into: its evaluations go
    to ``./evaluations/`` unless ``out`` says otherwise.
    """
    console = console or make_console()
    run_dir = Path(run_dir)
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RunDirError(f"{out}: already exists and is not empty; choose another --out")
    if tta is not None and tta not in TTA_MODES:
        raise ValueError(f"--tta {tta!r}: choose {' or '.join(TTA_MODES)}")
    model, cfg, run_info = load_run(run_dir, bundle_verified=bundle_verified)
    temperature = read_temperature(run_dir)
    recorded_tta = read_tta(run_dir)
    used_tta = recorded_tta if tta is None else tta
    if temperature is None:
        console.print(f"{run_dir}: no {CALIBRATION} (a run trained before volnas calibrated); "
                      "evaluated uncalibrated")
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
        metrics = evaluate_and_write(trainer, ds, loader, tmp, split, temperature, used_tta,
                                     operating=read_operating_point(run_dir))
        metrics["data"] = str(cfg.data)
        if used_tta != recorded_tta and temperature is not None:
            metrics["calibration"]["note"] = (
                f"the temperature was fitted on validation with tta {recorded_tta}; these "
                f"probabilities use tta {used_tta} (--tta override)")
        record = {
            "run": str(run_dir.resolve()),
            "data": str(cfg.data),
            "run_data": str(run_data),
            "same_data_as_run": _same_data(cfg.data, run_data, run_dir),
            "split": split,
            "n_scans": metrics["n_scans"],
            "weights_sha256": sha256_file(run_dir / "model.safetensors"),
            "temperature": temperature,
            "tta": used_tta,
            "tta_recorded": recorded_tta,
            "tta_overridden": used_tta != recorded_tta,
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
