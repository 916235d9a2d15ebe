"""Predict with a bundle on new scans: read, prepare exactly as evaluation does, classify.

A SCAN is a DICOM series folder, a NIfTI file, a slice folder, ``file.npz#split/i``, a
manifest CSV (all its scans; labels are shown), ``MANIFEST.csv#scan_id`` (one row) or a
MedMNIST ``.npz`` (all its scans), as :mod:`volnas.data.scans` resolves them. Scans that
cannot be read are collected with the file and the reason; the others are still predicted.
A scan whose raw intensities are far from the training scans' (see
:mod:`volnas.deploy.intensity`) is predicted with a ``warning``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from volnas.core.files import atomic_write_text
from volnas.core.markup import make_console
from volnas.data.preprocess import prepare_stack, take_slices
from volnas.data.readers import read_scan
from volnas.data.scans import resolve_scans
from volnas.data.volume import DataError
from volnas.deploy.bundle import Bundle
from volnas.deploy.intensity import check, describe, scan_stats
from volnas.training.device import autocast, prepare_model, resolve_device, to_device
from volnas.training.metrics import apply_temperature
from volnas.training.tta import check_mode, mean_softmax, views

INTENSITY_CHECK_UNAVAILABLE = (
    "unavailable: the bundle has no training intensity statistics (exported before volnas "
    "recorded them, or without its training data); scans are not checked")


CALIBRATED = ("calibrated: softmax(log p / temperature), temperature fitted on the training "
              "run's validation split; probabilities_raw are the model's own")
UNCALIBRATED = "uncalibrated: the bundle has no temperature (exported before volnas calibrated)"


@dataclass
class ScanItem:
    """One scan to predict, resolved from a SCAN argument."""

    name: str  # shown in the table: the argument, or the manifest's scan_id
    path: str  # what read_scan reads
    fmt: str | None
    label: str | None
    arg: str  # the same scan as a ``volnas explain`` argument


@dataclass
class Failure:
    """A scan (or argument) that could not be predicted."""

    scan: str
    path: str
    reason: str


def expand_scans(args: Sequence[str | Path]) -> tuple[list[ScanItem], list[Failure]]:
    """SCAN arguments -> scans (by :func:`volnas.data.scans.resolve_scans`); a manifest or an
    ``.npz`` expands into all of its scans. An argument that names no scan is a Failure."""
    items: list[ScanItem] = []
    failures: list[Failure] = []
    for raw in args:
        arg = str(raw)
        try:
            scans = resolve_scans(arg, expand=True)
        except (DataError, OSError, ValueError) as e:
            failures.append(failure_from(arg, arg, e))
            continue
        items += [ScanItem(s.scan_id if s.listed else s.given, s.path, s.fmt, s.label, s.arg)
                  for s in scans]
    return items, failures


def failure_from(name: str, path: str, e: BaseException) -> Failure:
    """A scan that could not be handled, with the reason (a DataError names its own file)."""
    if isinstance(e, DataError):
        return Failure(name, e.path, e.problem)
    return Failure(name, path, f"{type(e).__name__}: {e}")


def predict_scans(
    bundle: Bundle,
    scans: Sequence[str | Path],
    console: Console | None = None,
    *,
    batch_size: int = 4,
    device: str = "auto",
    tta: str | None = None,
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Class probabilities of every scan; unreadable scans are returned, not raised.

    Each scan goes through the evaluation path: ``read_scan``, ``prepare_stack`` rounded
    as the training cache stores it, and symmetrical ``take_slices``, so a scan gets the
    probabilities ``volnas evaluate`` gives it. Its raw intensity statistics are compared
    with the bundle's training statistics (when it has them).

    Args:
        bundle: from :func:`volnas.deploy.bundle.load_bundle`.
        scans: SCAN arguments (module docstring).
        console: where the progress bar goes (None: a default console).
        batch_size: scans per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        tta: test-time augmentation (:mod:`volnas.training.tta`); None: the bundle's
            choice (made on the training run's validation split). Applied to the model's
            probabilities before the temperature.

    Returns:
        ``(rows, failures)``: one row per predicted scan, in input order, with ``scan``,
        ``path``, ``label``, ``predicted``, ``probability``, ``probabilities`` per class
        (calibrated by the bundle's temperature, when it has one), ``probabilities_raw``
        (the model's own softmax, averaged over the TTA views), ``temperature``, ``tta``
        and ``warning`` (None, or why the scan
        looks unlike the training scans).
    """
    console = console or make_console()
    items, failures = expand_scans(scans)
    dev = resolve_device(device)
    model = prepare_model(bundle.model, dev, bundle.channels_last).eval()
    amp = bundle.amp and dev.type == "cuda"
    reference = bundle.intensity_reference
    temperature = bundle.temperature
    mode = check_mode(bundle.tta if tta is None else tta, "--tta")
    rows: list[dict[str, Any]] = []
    pending: list[tuple[ScanItem, np.ndarray, str | None]] = []

    def flush() -> None:
        x = to_device(torch.from_numpy(np.stack([p[1] for p in pending])), dev,
                      bundle.channels_last)
        logits = []
        for v in views(x, mode):
            with torch.no_grad(), autocast(dev, amp):
                logits.append(model(to_device(v, dev, bundle.channels_last)))
        raw = mean_softmax(logits).cpu().numpy()
        probs = raw if temperature is None else apply_temperature(raw, temperature)
        for (item, _, warning), p, r in zip(pending, probs, raw, strict=True):
            k = int(p.argmax())
            rows.append({
                "scan": item.name, "arg": item.arg, "path": item.path, "label": item.label,
                "predicted": bundle.classes[k], "probability": float(p[k]),
                "probabilities": {c: float(v) for c, v in zip(bundle.classes, p, strict=True)},
                "probabilities_raw": {c: float(v)
                                      for c, v in zip(bundle.classes, r, strict=True)},
                "temperature": temperature,
                "tta": mode,
                "warning": warning,
            })
        pending.clear()

    with Progress(TextColumn("[bold]predict"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
                  console=console, transient=True,
                  disable=len(items) < 2 or not console.is_terminal) as progress:
        task = progress.add_task("", total=len(items))
        for item in items:
            progress.update(task, description=item.name[-40:])
            try:
                volume = read_scan(item.path, item.fmt)
                stack, _ = prepare_stack(volume, bundle.preprocess)
                # float16, as the training cache stores stacks: predict equals evaluate
                stack = stack.astype(np.float16).astype(np.float32)
                x, _ = take_slices(stack, bundle.preprocess, "symmetrical", None)
                warning = None
                if reference is not None:
                    problems = check(scan_stats(volume, bundle.preprocess), reference)
                    warning = describe(problems) if problems else None
                pending.append((item, x, warning))
            except Exception as e:  # noqa: BLE001 - any unreadable scan is reported, not raised
                failures.append(failure_from(item.name, item.path, e))
            if len(pending) >= batch_size:
                flush()
            progress.advance(task)
        if pending:
            flush()

    return rows, failures




def write_predictions(
    path: Path, rows: Sequence[dict[str, Any]], failures: Sequence[Failure], bundle: Bundle
) -> Path:
    """Predictions (and failures) as ``.csv`` (one line per scan) or ``.json``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        payload = {
            "bundle": str(bundle.path.resolve()),
            "model": bundle.model_name,
            "classes": bundle.classes,
            "positive_class": bundle.positive_class,
            "probabilities": CALIBRATED if bundle.temperature is not None else UNCALIBRATED,
            "temperature": bundle.temperature,
            "tta": rows[0]["tta"] if rows else bundle.tta,
            "intensity_check": INTENSITY_CHECK_UNAVAILABLE if bundle.intensity_reference is None
            else "on",
            "predictions": list(rows),
            "failures": [asdict(f) for f in failures],
        }
        atomic_write_text(path, json.dumps(payload, indent=2))
        return path
    if suffix != ".csv":
        raise ValueError(f"{path}: --out must end in .csv or .json")
    buf = io.StringIO()
    w = csv.writer(buf)
    k = len(bundle.classes)
    w.writerow(["scan", "path", "label", "predicted", "probability",
                *[f"p_{c}" for c in bundle.classes], "temperature", "tta",
                *[f"p_raw_{c}" for c in bundle.classes], "warning", "error"])
    for r in rows:
        t = r.get("temperature")
        w.writerow([r["scan"], r["path"], r["label"] or "", r["predicted"],
                    f"{r['probability']:.6f}",
                    *[f"{r['probabilities'][c]:.6f}" for c in bundle.classes],
                    "none (uncalibrated)" if t is None else f"{t:.6g}", r.get("tta", ""),
                    *[f"{r['probabilities_raw'][c]:.6f}" for c in bundle.classes],
                    r.get("warning") or "", ""])
    for f in failures:
        w.writerow([f.scan, f.path, "", "", "", *[""] * k, "", "", *[""] * k, "", f.reason])
    atomic_write_text(path, buf.getvalue())
    return path
