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
from volnas.deploy.ensemble import (
    Ensemble,
    check_flags,
    mean_probabilities,
    uncertainty,
)
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
ENSEMBLE = ("the mean of the members' calibrated probabilities (each member's test-time "
            "augmentation, then its temperature); probabilities_raw: the mean of their own")
REVIEW = ("review: spread (std over members of the predicted class's probability) above "
          "flag_spread, or entropy / log K above flag_entropy")


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
    bundle: Bundle | Ensemble,
    scans: Sequence[str | Path],
    console: Console | None = None,
    *,
    batch_size: int = 4,
    device: str = "auto",
    tta: str | None = None,
    flag_spread: float | None = None,
    flag_entropy: float | None = None,
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Class probabilities of every scan; unreadable scans are returned, not raised.

    Each scan goes through the evaluation path: ``read_scan``, ``prepare_stack`` rounded
    as the training cache stores it, and symmetrical ``take_slices``, so a scan gets the
    probabilities ``volnas evaluate`` gives it. Its raw intensity statistics are compared
    with the bundle's training statistics (when it has them).

    Args:
        bundle: from :func:`volnas.deploy.bundle.load_bundle`, or an ensemble from
            :func:`volnas.deploy.ensemble.load_ensemble`.
        scans: SCAN arguments (module docstring).
        console: where the progress bar goes (None: a default console).
        batch_size: scans per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        tta: test-time augmentation (:mod:`volnas.training.tta`); None: the bundle's
            choice (made on the training run's validation split; in an ensemble, each
            member's own). Applied to the model's probabilities before the temperature.
        flag_spread, flag_entropy: an ensemble's review thresholds (None: those stored in
            the ensemble bundle).

    Returns:
        ``(rows, failures)``: one row per predicted scan, in input order, with ``scan``,
        ``path``, ``label``, ``predicted``, ``probability``, ``probabilities`` per class
        (calibrated by the bundle's temperature, when it has one), ``probabilities_raw``
        (the model's own softmax, averaged over the TTA views), ``temperature``, ``tta``
        and ``warning`` (None, or why the scan looks unlike the training scans). For an
        ensemble, ``probabilities`` is the mean of the members' calibrated probabilities,
        ``probabilities_raw`` the mean of their own, ``temperature`` and ``tta`` list each
        member's, and the row adds ``spread``, ``entropy``, ``review`` and ``members``
        (each member's calibrated probabilities); see :mod:`volnas.deploy.ensemble`.
    """
    console = console or make_console()
    items, failures = expand_scans(scans)
    dev = resolve_device(device)
    ensemble = isinstance(bundle, Ensemble)
    members = bundle.members if isinstance(bundle, Ensemble) else [bundle]
    nets = [prepare_model(b.model, dev, b.channels_last).eval() for b in members]
    modes = [check_mode(b.tta if tta is None else tta, "--tta") for b in members]
    if isinstance(bundle, Ensemble):
        flag_spread = bundle.flag_spread if flag_spread is None else flag_spread
        flag_entropy = bundle.flag_entropy if flag_entropy is None else flag_entropy
        check_flags(flag_spread, flag_entropy)
    reference = bundle.intensity_reference
    rows: list[dict[str, Any]] = []
    pending: list[tuple[ScanItem, np.ndarray, str | None]] = []

    def classify(b: Bundle, net: torch.nn.Module, x: torch.Tensor, mode: str
                 ) -> tuple[np.ndarray, np.ndarray]:
        """One network's calibrated and raw probabilities of the batch ``x``."""
        x = to_device(x, dev, b.channels_last)
        logits = []
        for v in views(x, mode):
            with torch.no_grad(), autocast(dev, b.amp and dev.type == "cuda"):
                logits.append(net(to_device(v, dev, b.channels_last)))
        raw = mean_softmax(logits).cpu().numpy()
        t = b.temperature
        return (raw if t is None else apply_temperature(raw, t)), raw

    def flush() -> None:
        x = torch.from_numpy(np.stack([p[1] for p in pending]))
        outs = [classify(b, net, x, mode)
                for b, net, mode in zip(members, nets, modes, strict=True)]
        classes = bundle.classes
        if ensemble:
            u = uncertainty([o[0] for o in outs], float(flag_spread), float(flag_entropy))
            probs, raw = u["probs"], mean_probabilities([o[1] for o in outs])
        else:
            probs, raw = outs[0]
        for i, (item, _, warning) in enumerate(pending):
            p, r = probs[i], raw[i]
            k = int(p.argmax())
            row: dict[str, Any] = {
                "scan": item.name, "arg": item.arg, "path": item.path, "label": item.label,
                "predicted": classes[k], "probability": float(p[k]),
                "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
                "probabilities_raw": {c: float(v) for c, v in zip(classes, r, strict=True)},
                "temperature": members[0].temperature,
                "tta": modes[0],
                "warning": warning,
            }
            op = None if ensemble else members[0].operating_point
            if op is not None and bundle.positive_class in classes:
                pos_p = float(p[classes.index(bundle.positive_class)])
                row.update({"threshold": float(op["threshold"]),
                            "positive_at_threshold": pos_p >= float(op["threshold"])})
            if ensemble:
                row.update({
                    "temperature": [b.temperature for b in members], "tta": list(modes),
                    "spread": float(u["spread"][i]), "entropy": float(u["entropy"][i]),
                    "review": bool(u["review"][i]),
                    "members": [{c: float(v) for c, v in zip(classes, o[0][i], strict=True)}
                                for o in outs]})
            rows.append(row)
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
    path: Path, rows: Sequence[dict[str, Any]], failures: Sequence[Failure],
    bundle: Bundle | Ensemble, flags: tuple[float, float] | None = None,
) -> Path:
    """Predictions (and failures) as ``.csv`` (one line per scan) or ``.json``. For an
    ensemble the CSV adds ``spread``, ``entropy`` and ``review`` (``yes`` or empty), and its
    ``temperature`` / ``tta`` columns list the members' values, separated by ``;``; the
    JSON records the review thresholds (``flags``: those used, default the bundle's)."""
    path = Path(path)
    suffix = path.suffix.lower()
    ensemble = isinstance(bundle, Ensemble)
    if suffix == ".json":
        payload: dict[str, Any] = {
            "bundle": str(bundle.path.resolve()),
            "model": bundle.model_name,
            "classes": bundle.classes,
            "positive_class": bundle.positive_class,
            "intensity_check": INTENSITY_CHECK_UNAVAILABLE if bundle.intensity_reference is None
            else "on",
        }
        if isinstance(bundle, Ensemble):
            payload.update({"probabilities": ENSEMBLE,
                            "temperature": [b.temperature for b in bundle.members],
                            "tta": rows[0]["tta"] if rows else [b.tta for b in bundle.members],
                            "review": REVIEW,
                            "flag_spread": (flags or bundle.flags)[0],
                            "flag_entropy": (flags or bundle.flags)[1]})
        else:
            payload.update({
                "probabilities": CALIBRATED if bundle.temperature is not None else UNCALIBRATED,
                "temperature": bundle.temperature,
                "tta": rows[0]["tta"] if rows else bundle.tta,
                "operating_point": bundle.operating_point})
        payload.update({"predictions": list(rows), "failures": [asdict(f) for f in failures]})
        atomic_write_text(path, json.dumps(payload, indent=2))
        return path
    if suffix != ".csv":
        raise ValueError(f"{path}: --out must end in .csv or .json")
    buf = io.StringIO()
    w = csv.writer(buf)
    k = len(bundle.classes)
    extra = ["spread", "entropy", "review"] if ensemble else []
    op = None if ensemble else bundle.operating_point
    at = ["threshold", "positive_at_threshold"] if op else []
    w.writerow(["scan", "path", "label", "predicted", "probability",
                *[f"p_{c}" for c in bundle.classes], *extra, "temperature", "tta",
                *[f"p_raw_{c}" for c in bundle.classes], *at, "warning", "error"])
    for r in rows:
        values = ([f"{r['spread']:.6f}", f"{r['entropy']:.6f}", "yes" if r["review"] else ""]
                  if ensemble else [])
        called = ([f"{r['threshold']:.6g}", "yes" if r["positive_at_threshold"] else "no"]
                  if at and "threshold" in r else [""] * len(at))
        w.writerow([r["scan"], r["path"], r["label"] or "", r["predicted"],
                    f"{r['probability']:.6f}",
                    *[f"{r['probabilities'][c]:.6f}" for c in bundle.classes], *values,
                    _temperatures(r.get("temperature")), _joined(r.get("tta", "")),
                    *[f"{r['probabilities_raw'][c]:.6f}" for c in bundle.classes], *called,
                    r.get("warning") or "", ""])
    for f in failures:
        w.writerow([f.scan, f.path, "", "", "", *[""] * k, *[""] * len(extra), "", "",
                    *[""] * k, *[""] * len(at), "", f.reason])
    atomic_write_text(path, buf.getvalue())
    return path


def _temperatures(t: float | list[float | None] | None) -> str:
    if isinstance(t, list):
        return ";".join(_temperatures(v) for v in t)
    return "none (uncalibrated)" if t is None else f"{t:.6g}"


def _joined(value: str | list[str]) -> str:
    return ";".join(value) if isinstance(value, list) else value
