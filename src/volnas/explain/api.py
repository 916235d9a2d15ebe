"""Explain a trained run's predictions on scans: maps on the source grid, files, faithfulness.

A SCAN is a DICOM series folder, a NIfTI file, a slice folder, ``file.npz#split/i`` or a
manifest row written as ``MANIFEST.csv#scan_id`` (the row's path, format and label are
used), as :mod:`volnas.data.scans` resolves them.

Each scan is read, prepared exactly as in evaluation (the run's preprocessing, symmetrical
slice sampling), explained, and the map is mapped back to the scan's own grid
(:mod:`volnas.explain.geometry`). Output layout (``out`` must not exist or be empty)::

    out/<scan name>/montage.png       evenly spaced slices, map over the CT
    out/<scan name>/heatmap.nii.gz    float32 map in [0, 1], the scan's affine
    out/<scan name>/explanation.json  prediction, probabilities, slices with most of the map
    out/summary.json, summary.csv     every scan, plus faithfulness means when masks are given

Masks (``masks``): a folder holding ``masks.csv`` as written by :mod:`volnas.data.synth`
(columns scan_id, scan_path, mask_path; paths relative to the folder). A scan is matched by
its resolved path (for ``.npz`` scans by file and the ``<split>_<index>`` scan id).
Faithfulness is measured on the map that is written, i.e. for the explained class.

``explanation.json`` also records ``raw_map_max``, the map's peak before normalisation: a
value <= 0 means the class has no positive evidence anywhere (Grad-CAM then writes an
all-zero map, which scores exactly like a uniform map); and ``map_resolution``, the map's
(D, H, W) at the target layer before upsampling: a ResNet's last stage on a 16x48x48 input
is 1x2x2, too coarse to point at a lesion (choose an earlier ``--layer`` for Grad-CAM).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from volnas.core.files import atomic_write_text
from volnas.core.markup import esc, make_console
from volnas.data.preprocess import PreprocessConfig, StackGeometry, prepare_stack, take_slices
from volnas.data.readers import read_nifti, read_scan, split_npz_path
from volnas.data.scans import resolve_scans
from volnas.data.volume import DataError, Volume
from volnas.deploy.bundle import load_run_or_bundle
from volnas.deploy.ensemble import is_ensemble_bundle, load_ensemble
from volnas.explain.ensemble import EnsembleExplainer
from volnas.explain.faithfulness import (
    Curve,
    faithfulness,
    model_probs,
    saliency_curve,
    summarize,
)
from volnas.explain.geometry import to_source_grid
from volnas.explain.methods import DEFAULT_METHOD, make_explainer, method_info
from volnas.explain.render import (
    render_curves,
    render_montage,
    top_slices,
    write_heatmap_nifti,
    write_json,
)


class OutputExistsError(FileExistsError):
    """The output folder already holds files; explanations never overwrite."""


# --------------------------------------------------------------------------- scans


@dataclass
class ScanRef:
    """One SCAN argument, resolved."""

    arg: str  # as given
    path: str  # what read_scan reads (may end in #split/i)
    fmt: str | None = None
    scan_id: str = ""
    label: str | None = None


def resolve_scan(arg: str) -> ScanRef:
    """A SCAN argument -> ScanRef (by :func:`volnas.data.scans.resolve_scans`)."""
    scan = resolve_scans(arg)[0]
    return ScanRef(scan.given, scan.path, scan.fmt, scan.scan_id, scan.label)


def safe_names(refs: Sequence[ScanRef]) -> list[str]:
    """Distinct folder names (``[A-Za-z0-9._-]``) for the scans, ``-2``, ``-3`` on clashes."""
    seen: dict[str, int] = {}
    out = []
    for r in refs:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", r.scan_id).strip("._") or "scan"
        if name in seen:
            seen[name] += 1
            name = f"{name}-{seen[name]}"
        else:
            seen[name] = 1
        out.append(name)
    return out


def scan_key(path: str) -> str:
    """Identity of a scan path for mask matching: resolved path (+ ``#split/i`` for npz)."""
    p, split, index = split_npz_path(path)
    key = str(p.resolve())
    return f"{key}#{split}/{index}" if split is not None else key


def load_mask_table(masks: Path) -> dict[str, Path]:
    """``masks.csv`` in ``masks`` (or the CSV itself) -> {scan key: mask file}."""
    masks = Path(masks)
    csv_path = masks if masks.is_file() else masks / "masks.csv"
    if not csv_path.is_file():
        raise DataError(masks, "no masks.csv here (expected the folder `volnas data synth` wrote)")
    root = csv_path.parent
    table: dict[str, Path] = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"scan_id", "scan_path", "mask_path"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(csv_path, f"missing column(s) {sorted(missing)}")
        for row in reader:
            scan = root / row["scan_path"]
            key = str(scan.resolve())
            m = re.fullmatch(r"(train|val|test)_(\d+)", row["scan_id"])
            if key.lower().endswith(".npz") and m:
                key = f"{key}#{m.group(1)}/{int(m.group(2))}"
            table[key] = root / row["mask_path"]
    return table


def read_mask(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A lesion mask NIfTI as bool D x H x W, checked against the scan's shape."""
    mask = read_nifti(path).array > 0
    if mask.shape != tuple(shape):
        raise DataError(path, f"mask shape {mask.shape} differs from the scan's {tuple(shape)}")
    return mask


# --------------------------------------------------------------------------- core


@dataclass
class VolumeExplanation:
    """One scan explained, on its own grid."""

    heatmap: np.ndarray  # (D, H, W) float32 in [0, 1]
    model_map: np.ndarray  # (T, H', W') on the model input
    probs: np.ndarray  # (classes,)
    target: int  # class index the map explains
    indices: np.ndarray  # sampled source slice of each input plane
    geometry: StackGeometry
    raw_max: float = 0.0  # peak of the map before normalisation (<= 0: no positive evidence)
    raw_shape: tuple[int, ...] = ()  # the map at the target layer, before upsampling
    model_input: np.ndarray | None = None  # (C, T, H', W') what the network saw


def prepare_input(volume: Volume, pre: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, StackGeometry]:
    """Model input (1, T, H, W), sampled slice indices and geometry, as in evaluation."""
    stack, geom = prepare_stack(volume, pre)
    x, idx = take_slices(stack, pre, "symmetrical", None)
    return x, idx, geom


def explain_volumes(
    explainer: Any,
    volumes: Sequence[Volume],
    pre: PreprocessConfig,
    target: int | None = None,
    device: str | torch.device = "cpu",
) -> list[VolumeExplanation]:
    """Explain volumes in one batch and map every map back to its source grid.

    Args:
        explainer: from :func:`volnas.explain.methods.make_explainer`.
        volumes: scans as read.
        pre: the run's preprocessing.
        target: class index to explain; None: each scan's predicted class.
        device: where the model is.
    """
    prepared = [prepare_input(v, pre) for v in volumes]
    x = torch.from_numpy(np.stack([p[0] for p in prepared])).to(device)
    exp = explainer(x, target)
    probs = exp.probs.cpu().numpy()
    out = []
    for i, (_, idx, geom) in enumerate(prepared):
        model_map = exp.maps[i].cpu().numpy()
        out.append(VolumeExplanation(to_source_grid(model_map, idx, geom), model_map, probs[i],
                                     int(exp.classes[i]), idx, geom, float(exp.raw[i].max()),
                                     tuple(int(n) for n in exp.raw[i].shape),
                                     x[i].cpu().numpy()))
    return out


def explain_scans(
    run_dir: Path,
    scans: list[str],
    out: Path,
    method: str = DEFAULT_METHOD,
    target_class: str | None = None,
    masks: Path | None = None,
    console: Console | None = None,
    *,
    target_layer: str | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    montage_count: int = 12,
    options: dict[str, Any] | None = None,
    curves: bool = False,
    curve_steps: int = 20,
) -> list[dict[str, Any]]:
    """Explain ``scans`` with the best model of ``run_dir``; write files under ``out``.

    Args:
        run_dir: a finished training run, a bundle, or an ensemble bundle (the members' maps
            averaged, :mod:`volnas.explain.ensemble`).
        scans: SCAN arguments (module docstring).
        out: output folder; must not exist or be empty.
        method: a name of :func:`volnas.explain.methods.list_methods`.
        target_class: class name to explain; None: each scan's predicted class.
        masks: folder with ``masks.csv``; adds pointing game, energy fraction and the
            deletion / insertion AUCs (:func:`volnas.explain.faithfulness.saliency_curve`).
        console: where to print the summary (None: a default console).
        target_layer: dotted module name overriding the default layer.
        batch_size: scans per forward pass.
        device: torch device for the model.
        options: method options (``box``, ``stride``, ``samples``; see
            :func:`volnas.explain.methods.make_explainer`).
        curves: also compute the deletion / insertion curves of every scan (without masks
            too) and write ``curves.png`` beside each montage.
        curve_steps: portions of voxels per curve.

    Returns:
        One dict per scan (what ``explanation.json`` holds).
    """
    console = console or make_console()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out}: already exists and is not empty; choose another --out")
    if not scans:
        raise ValueError("no scans to explain")
    refs = [resolve_scan(s) for s in scans]
    names = safe_names(refs)
    mask_table = load_mask_table(masks) if masks is not None else None

    method_info(method)  # unknown method: ExplainError before any work
    explainer, pre, model_name, classes = _explainer_of(Path(run_dir), method, target_layer,
                                                        device, options or {})
    target = None
    if target_class is not None:
        if target_class not in classes:
            raise ValueError(f"unknown class {target_class!r}; the run's classes: {classes}")
        target = classes.index(target_class)
    out.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    for start in range(0, len(refs), batch_size):
        chunk = list(range(start, min(start + batch_size, len(refs))))
        volumes = [read_scan(refs[i].path, refs[i].fmt) for i in chunk]
        explained = explain_volumes(explainer, volumes, pre, target, device)
        for i, vol, ex in zip(chunk, volumes, explained, strict=True):
            curve_pair = None
            if curves or mask_table is not None:
                curve_pair = deletion_insertion(explainer, ex, device, curve_steps)
            results.append(_write_scan(out / names[i], refs[i], names[i], vol, ex, classes,
                                       method, explainer.target_layer, mask_table,
                                       montage_count, curve_pair, curves))
    summary = _write_summary(out, run_dir, model_name, method, explainer.target_layer, classes,
                             results)
    _print(console, results, summary, out)
    return results


def deletion_insertion(explainer: Any, ex: VolumeExplanation, device: str | torch.device,
                       steps: int = 20) -> tuple[Curve, Curve]:
    """Deletion and insertion curves of one explained scan, on the network input grid."""
    prob_fn = (explainer.probabilities if isinstance(explainer, EnsembleExplainer)
               else model_probs(explainer.model))
    if ex.model_input is None:
        raise ValueError("the explanation holds no network input")
    x = torch.from_numpy(ex.model_input).to(device)
    return (saliency_curve(prob_fn, x, ex.model_map, ex.target, "deletion", steps),
            saliency_curve(prob_fn, x, ex.model_map, ex.target, "insertion", steps))


def _explainer_of(folder: Path, method: str, target_layer: str | None, device: str | torch.device,
                  options: dict[str, Any] | None = None
                  ) -> tuple[Any, PreprocessConfig, str, list[str]]:
    """The explainer of a run, bundle or ensemble bundle (members' maps averaged, see
    :mod:`volnas.explain.ensemble`), its preprocessing, model name and classes."""
    if is_ensemble_bundle(folder):
        ens = load_ensemble(folder)
        explainers = [make_explainer(b.model.to(device).eval(), method, target_layer,
                                     b.model_name, **(options or {})) for b in ens.members]
        return (EnsembleExplainer(explainers, [b.temperature for b in ens.members]),
                ens.preprocess, ens.model_name, list(ens.classes))
    model, cfg, info = load_run_or_bundle(folder)
    model = model.to(device).eval()
    return (make_explainer(model, method, target_layer, cfg.model, **(options or {})),
            cfg.preprocess, cfg.model, list(info["classes"]))


def _write_scan(
    folder: Path,
    ref: ScanRef,
    name: str,
    volume: Volume,
    ex: VolumeExplanation,
    classes: list[str],
    method: str,
    layer: str,
    mask_table: dict[str, Path] | None,
    montage_count: int,
    curve_pair: tuple[Curve, Curve] | None = None,
    write_curves: bool = False,
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=False)
    pred = int(np.argmax(ex.probs))
    mask = None
    mask_path = mask_table.get(scan_key(ref.path)) if mask_table is not None else None
    if mask_path is not None:
        mask = read_mask(mask_path, volume.shape)
    title = (f"{name}: predicted {classes[pred]} (p={ex.probs[pred]:.2f})"
             + (f", label {ref.label}" if ref.label else "")
             + f"\n{method_info(method).label} for '{classes[ex.target]}' ({layer})")
    shown = render_montage(folder / "montage.png", volume, ex.heatmap, title, mask,
                           count=montage_count)
    write_heatmap_nifti(folder / "heatmap.nii.gz", ex.heatmap, volume)
    files = {"montage": "montage.png", "heatmap": "heatmap.nii.gz", "json": "explanation.json"}
    if curve_pair is not None and write_curves:
        render_curves(folder / "curves.png", curve_pair, f"{name}: {method_info(method).label}")
        files["curves"] = "curves.png"
    faith = faithfulness(ex.heatmap, mask) if mask is not None and mask.any() else None
    if faith is not None and curve_pair is not None:
        faith["deletion_auc"] = curve_pair[0].auc
        faith["insertion_auc"] = curve_pair[1].auc
    record: dict[str, Any] = {
        "name": name,
        "scan": ref.arg,
        "path": ref.path,
        "format": volume.meta.get("format", ref.fmt),
        "label": ref.label,
        "source_shape": list(volume.shape),
        "spacing_mm": [round(s, 5) for s in volume.spacing],
        "predicted": classes[pred],
        "probability": float(ex.probs[pred]),
        "probabilities": {c: float(p) for c, p in zip(classes, ex.probs, strict=True)},
        "method": method,
        "target_class": classes[ex.target],
        "target_layer": layer,
        "raw_map_max": ex.raw_max,
        "map_resolution": list(ex.raw_shape),
        "sampled_slices": [int(i) for i in ex.indices],
        "slices": top_slices(ex.heatmap),
        "montage_slices": shown,
        "files": files,
        "mask": str(mask_path) if mask_path is not None else None,
        "faithfulness": faith,
        "curves": None if curve_pair is None else {
            c.kind: {"fractions": [round(float(f), 6) for f in c.fractions],
                     "probability": [round(float(p), 6) for p in c.probs], "auc": c.auc}
            for c in curve_pair},
    }
    write_json(folder / "explanation.json", record)
    return record


_CSV_COLUMNS = ("name", "scan", "label", "predicted", "probability", "target_class",
                "pointing_hit", "energy_in_lesion", "lesion_fraction", "deletion_auc",
                "insertion_auc")


def _write_summary(
    out: Path, run_dir: Path, model: str, method: str, layer: str, classes: list[str],
    results: list[dict[str, Any]],
) -> dict[str, Any]:
    scored = [r["faithfulness"] for r in results if r["faithfulness"] is not None]
    summary = {
        "run_dir": str(Path(run_dir).resolve()),
        "model": model,
        "method": method,
        "target_layer": layer,
        "classes": classes,
        "faithfulness": summarize(scored) if scored else None,
        "scans": results,
    }
    write_json(out / "summary.json", summary)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_CSV_COLUMNS)
    for r in results:
        f = r["faithfulness"] or {}
        w.writerow([r["name"], r["scan"], r["label"] or "", r["predicted"],
                    f"{r['probability']:.6f}", r["target_class"],
                    *(f"{f[k]:.6f}" if k in f else "" for k in _CSV_COLUMNS[6:])])
    atomic_write_text(out / "summary.csv", buf.getvalue())
    return summary


def _print(console: Console, results: list[dict[str, Any]], summary: dict[str, Any],
           out: Path) -> None:
    table = Table(title=f"{method_info(summary['method']).label} "
                        f"({esc(summary['model'])}, layer {esc(summary['target_layer'])})")
    for col in ("scan", "label", "predicted", "p", "map for", "top slices", "hit", "energy",
                "deletion AUC"):
        table.add_column(col, justify="left" if col in ("scan", "label", "predicted", "map for",
                                                        "top slices") else "right")
    for r in results:
        f = r["faithfulness"]
        table.add_row(esc(r["name"]), esc(r["label"] or ""), esc(r["predicted"]),
                      f"{r['probability']:.3f}", esc(r["target_class"]),
                      ", ".join(str(t["slice"]) for t in r["slices"]["top"][:3]),
                      f"{f['pointing_hit']:.2f}" if f else "",
                      f"{f['energy_in_lesion']:.3f}" if f else "",
                      f"{r['curves']['deletion']['auc']:.3f}" if r.get("curves") else "")
    console.print(table)
    fs = summary["faithfulness"]
    if fs:
        console.print(
            f"faithfulness over {fs['n_scans']} scans with lesion masks: pointing-game hit rate "
            f"[bold]{fs['hit_rate']:.3f}[/] (uniform map {fs['uniform_pointing']:.3f}), energy in "
            f"lesions [bold]{fs['energy_in_lesion']:.3f}[/] (uniform map {fs['uniform_energy']:.3f}"
            f", {fs['energy_in_lesion'] / max(fs['uniform_energy'], 1e-12):.1f}x)"
            + (f", deletion AUC [bold]{fs['deletion_auc']:.3f}[/] (lower: the model used the "
               f"map), insertion AUC {fs['insertion_auc']:.3f}" if "deletion_auc" in fs else "")
        )
    console.print(f"explanations: {esc(out)}")


def explain_test_scans(
    run_dir: Path,
    manifest: Path,
    out: Path,
    n: int = 3,
    method: str = DEFAULT_METHOD,
    masks: Path | None = None,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Explain up to ``n`` test-split scans of ``manifest`` (positive class first), for the demo.

    Scans are passed as ``MANIFEST.csv#scan_id``; ``masks`` as in :func:`explain_scans`.
    """
    from volnas.data.manifest import read_manifest, read_manifest_info

    rows = [r for r in read_manifest(Path(manifest)) if r.split == "test"]
    if not rows:
        raise DataError(manifest, "no test scans to explain")
    positive = read_manifest_info(Path(manifest)).get("positive_class")
    pos = [r for r in rows if r.label == positive]
    rest = [r for r in rows if r.label != positive]
    n = max(1, n)
    k = min(len(pos), max(1, n - 1))  # mostly positives (lesions to point at), one other
    picked = pos[:k] + rest[: n - k]
    picked += pos[k : k + n - len(picked)]
    return explain_scans(run_dir, [f"{manifest}#{r.scan_id}" for r in picked], out,
                         method=method, masks=masks, console=console)
