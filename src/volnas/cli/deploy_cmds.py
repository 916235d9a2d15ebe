"""``volnas export``, ``volnas ensemble``, ``volnas predict`` and ``volnas benchmark``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from volnas.cli.common import (
    TTA,
    Split,
    console,
    err_console,
    fail,
    metrics_table,
    optional_shape,
)
from volnas.core.markup import esc, print_warning
from volnas.deploy.ensemble import FLAG_ENTROPY, FLAG_SPREAD

if TYPE_CHECKING:
    from volnas.deploy.bundle import Bundle
    from volnas.deploy.ensemble import Ensemble
    from volnas.deploy.predict import Failure

FLAG_SPREAD_HELP = ("Ensembles: flag a scan for review when the std over members of the "
                    "predicted class's probability exceeds this")
FLAG_ENTROPY_HELP = ("Ensembles: flag a scan for review when the entropy of its probabilities "
                     "/ log K exceeds this")


def export_cmd(
    run_dir: Path = typer.Argument(..., help="A finished training run (or search) folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder (must not exist or be empty)."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write model.onnx (needs `onnx`)."),
) -> None:
    """Write a self-contained model bundle: safetensors weights, architecture, preprocessing."""
    import warnings

    from volnas.deploy.bundle import BundleError, export_bundle, load_bundle

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            export_bundle(run_dir, out, onnx=onnx)
        bundle = load_bundle(out)  # what was written loads and verifies
    except (BundleError, FileNotFoundError, ValueError) as e:
        fail(e)
    for w in caught:
        print_warning(err_console, w.message)
    m = bundle.manifest
    size = m["model"].get("model_size_mb")
    arch = (f"searched {bundle.genotype.space} network" if bundle.genotype is not None
            else bundle.model_name)
    console.print(
        f"bundle: {esc(out)}  ({esc(arch)}, input {'x'.join(map(str, bundle.input_shape))}, "
        f"classes {esc(', '.join(bundle.classes))}"
        + (f", {size:.2f} MB" if size is not None else "")
        + (", model.onnx" if (m.get("onnx") or {}).get("file") else "") + ")")


def ensemble_cmd(
    members: list[Path] = typer.Argument(
        ..., help="Two or more finished runs (or search folders) or bundles; an ensemble "
        "bundle adds all of its members."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Evaluation folder (must not exist or be empty)."),
    data: str = typer.Option(None, "--data", help="Manifest/npz (default: the members' data)."),
    split: Split = typer.Option("test", "--split", help="Which split of the data."),
    export: Path = typer.Option(None, "--export",
                                help="Also write an ensemble bundle here (for predict, explain)."),
    flag_spread: float = typer.Option(None, "--flag-spread", help=f"{FLAG_SPREAD_HELP} [{FLAG_SPREAD}]."),
    flag_entropy: float = typer.Option(None, "--flag-entropy", help=f"{FLAG_ENTROPY_HELP} [{FLAG_ENTROPY}]."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]."),
) -> None:
    """Average the calibrated probabilities of several networks and evaluate them like a run.

    Each member keeps its own test-time augmentation and temperature. Writes metrics.json
    (with patient-bootstrap intervals), the predictions with spread, entropy and review
    flag, plots and ensemble.json; --export also writes an ensemble bundle.
    """
    import warnings

    from volnas.data.volume import DataError
    from volnas.deploy.bundle import BundleError
    from volnas.deploy.ensemble import evaluate_ensemble
    from volnas.training.rundir import RunDirError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics = evaluate_ensemble(list(members), out, data=data, split=split,
                                        export=export, flag_spread=flag_spread,
                                        flag_entropy=flag_entropy, device=device,
                                        console=console)
    except (BundleError, DataError, RunDirError, ValueError, FileNotFoundError) as e:
        fail(e)
    for w in caught:
        print_warning(err_console, w.message)
    members_table = Table(title=f"{len(metrics['members'])} members on {metrics['split']}")
    for col in ("member", "tta", "temperature", "accuracy", "f1", "auc", "ECE"):
        members_table.add_column(col, justify="left" if col == "member" else "right")
    for m in metrics["members"]:
        t = m.get("temperature")
        members_table.add_row(esc(m["path"]), esc(m["tta"]), "none" if t is None else f"{t:.3f}",
                              *["n/a" if m.get(k) is None else f"{m[k]:.4f}"
                                for k in ("accuracy", "f1", "auc", "ece_calibrated")])
    console.print(members_table)
    console.print(metrics_table(metrics, split, title="ensemble, "))
    cal, review = metrics["calibration"], metrics["review"]
    console.print(f"ECE {cal['ece_calibrated']:.4f}, Brier {cal['brier_calibrated']:.4f} (members "
                  f"uncalibrated, averaged: ECE {cal['ece']:.4f}, Brier {cal['brier']:.4f})")
    console.print(f"review: {review['n_flagged']} of {review['n_scans']} scans flagged (spread > "
                  f"{review['flag_spread']:g} or entropy > {review['flag_entropy']:g})")
    console.print(f"evaluation: {esc(metrics['evaluation_dir'])}", soft_wrap=True)
    if export is not None:
        console.print(f"ensemble bundle: {esc(export)}", soft_wrap=True)


def predict_cmd(
    model_dir: Path = typer.Argument(
        ..., help="A bundle folder from `volnas export` (or an ensemble bundle from "
        "`volnas ensemble --export`)."),
    scans: list[str] = typer.Argument(
        ..., help="DICOM series folder, NIfTI file, slice folder, file.npz#split/i, a manifest "
        "CSV (all its scans), MANIFEST.csv#scan_id, or a MedMNIST .npz."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the predictions: FILE.csv or FILE.json."),
    explain: bool = typer.Option(False, "--explain", help="Also write CAM heatmaps of every scan."),
    explain_dir: Path = typer.Option(None, "--explain-dir",
                                     help="Folder for --explain [next free ./explain-NNN]."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Scans per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]."),
    tta: TTA = typer.Option(
        None, "--tta", help="Test-time augmentation, overriding the bundle's choice made on "
        "validation (flips: 4x inference) [the bundle's]."),
    flag_spread: float = typer.Option(None, "--flag-spread", help=FLAG_SPREAD_HELP
                                      + " [the ensemble bundle's]."),
    flag_entropy: float = typer.Option(None, "--flag-entropy", help=FLAG_ENTROPY_HELP
                                       + " [the ensemble bundle's]."),
) -> None:
    """Classify scans with a bundle; exit code 1 when some scan could not be predicted.

    With an ensemble bundle each scan also gets its ensemble spread, normalised entropy and
    a review flag."""
    from volnas.deploy.bundle import BundleError
    from volnas.deploy.ensemble import Ensemble, load_any
    from volnas.deploy.predict import INTENSITY_CHECK_UNAVAILABLE, predict_scans, write_predictions

    if out is not None:
        if out.suffix.lower() not in (".csv", ".json"):
            raise typer.BadParameter("must end in .csv or .json", param_hint="--out")
        if out.exists():
            fail(f"{out}: already exists; refusing to overwrite")
    if explain_dir is not None and not explain:
        raise typer.BadParameter("needs --explain", param_hint="--explain-dir")
    if explain and explain_dir is None:
        from volnas.cli.demo import next_free

        explain_dir = next_free(Path.cwd(), "explain")
    try:
        bundle = load_any(model_dir)
        ensemble = isinstance(bundle, Ensemble)
        if not ensemble and (flag_spread is not None or flag_entropy is not None):
            raise ValueError("--flag-spread and --flag-entropy need an ensemble bundle")
        rows, failures = predict_scans(bundle, scans, console=console,
                                       batch_size=batch_size, device=device, tta=tta,
                                       flag_spread=flag_spread, flag_entropy=flag_entropy)
        if explain and rows:
            failures += explain_predicted(bundle, [r["arg"] for r in rows], explain_dir, console)
    except (BundleError, ValueError, FileNotFoundError) as e:
        fail(e)
    table = Table(title=f"{len(rows)} scan(s), bundle {esc(str(model_dir))}")
    labelled = any(r["label"] for r in rows)
    extra = ["spread", "entropy", "review"] if ensemble else []
    op = None if ensemble else bundle.operating_point
    at = [f"{bundle.positive_class} at p >= {op['threshold']:.3f}"] if op else []
    for col in ("scan", *(["label"] if labelled else []), "predicted",
                *[f"p({c})" for c in bundle.classes], *extra, *at):
        table.add_column(esc(col), justify="right" if col.startswith("p(") or col in extra[:2]
                         else "left")
    for r in rows:
        table.add_row(esc(r["scan"]), *([esc(r["label"] or "")] if labelled else []),
                      esc(r["predicted"]),
                      *[f"{r['probabilities'][c]:.4f}" for c in bundle.classes],
                      *([f"{r['spread']:.3f}", f"{r['entropy']:.3f}",
                         "REVIEW" if r["review"] else ""] if ensemble else []),
                      *(["yes" if r.get("positive_at_threshold") else "no"] if at else []))
    console.print(table)
    if op:
        console.print(f"operating point: {esc(op['rule'])} threshold chosen on the training run's "
                      "validation split (predicted is the most probable class)", soft_wrap=True)
    if ensemble and rows:
        s_flag = bundle.flag_spread if flag_spread is None else flag_spread
        h_flag = bundle.flag_entropy if flag_entropy is None else flag_entropy
        console.print(f"{sum(r['review'] for r in rows)} of {len(rows)} scan(s) flagged for "
                      f"review (spread > {s_flag:g} or entropy > {h_flag:g})")
    if bundle.intensity_reference is None:
        err_console.print(f"note: intensity check {esc(INTENSITY_CHECK_UNAVAILABLE)}", soft_wrap=True)
    for r in rows:
        if r["warning"]:
            print_warning(err_console, f"{r['path']}: {r['warning']}")
    if out is not None:
        write_predictions(out, rows, failures, bundle, flags=(
            bundle.flag_spread if flag_spread is None else flag_spread,
            bundle.flag_entropy if flag_entropy is None else flag_entropy) if ensemble else None)
        console.print(f"predictions: {esc(out)}")
    if failures:
        err_console.print(f"[red]{len(failures)} could not be predicted:[/]")
        for f in failures:
            err_console.print(f"  {esc(f.path)}: {esc(f.reason)}", soft_wrap=True)
        raise typer.Exit(1)


def benchmark_cmd(
    data: str = typer.Option(..., "--data", help="Manifest CSV or MedMNIST .npz (shared splits)."),
    models: str = typer.Option("", "--models", help="Comma-separated registry names."),
    search: str = typer.Option("", "--search", help="Comma-separated search spaces; SPACE:random for the random-search baseline."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per model."),
    out: Path = typer.Option(..., "--out", "-o", help="Benchmark folder (re-run to resume)."),
    epochs: int = typer.Option(None, "--epochs", help="Training epochs of every baseline [200]."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size [8]."),
    slices: int = typer.Option(None, "--slices", help="Slices per scan T [32]."),
    size: str = typer.Option(None, "--size", help="In-plane HxW [128x128]."),
    search_epochs: int = typer.Option(None, "--search-epochs", help="Search epochs [30]."),
    probe_epochs: int = typer.Option(None, "--probe-epochs", help="Epochs per probe [3]."),
    retrain_epochs: int = typer.Option(None, "--retrain-epochs",
                                       help="Retrain epochs of the searched net [--epochs]."),
    topk: int = typer.Option(None, "--topk", help="Architectures probed after a search [10]."),
    search_size: str = typer.Option(None, "--search-size", help="Search HxW (reduced)."),
    search_slices: int = typer.Option(None, "--search-slices", help="Search slices (reduced)."),
    config: Path = typer.Option(None, "--config", help="YAML settings; flags override it."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda[:N]."),
    report_only: bool = typer.Option(False, "--report-only",
                                     help="Run nothing: report the cells finished so far."),
) -> None:
    """Train baselines and run searches with every seed; write report.md/json and a plot."""
    from volnas.benchmark import BenchmarkError, run_benchmark

    overrides = {
        "epochs": epochs, "batch_size": batch_size, "slices": slices,
        "size": optional_shape(size, 2, "--size"), "search_epochs": search_epochs,
        "probe_epochs": probe_epochs, "retrain_epochs": retrain_epochs, "topk": topk,
        "search_size": optional_shape(search_size, 2, "--search-size"), "search_slices": search_slices,
        "device": device,
    }
    names = [m.strip() for m in models.split(",") if m.strip()]
    spaces = [s.strip() for s in search.split(",") if s.strip()]
    try:
        report = run_benchmark(data, names, spaces, seeds, out, config=config,
                               overrides=overrides, console=console, report_only=report_only)
    except BenchmarkError as e:
        fail(e)
    if report["failed"]:
        err_console.print(f"[red]{len(report['failed'])} run(s) failed[/] (listed in {esc(out / 'report.md')})")
        raise typer.Exit(1)


def explain_predicted(
    bundle: Bundle | Ensemble, scans: list[str], out: Path, console: Console
) -> list[Failure]:
    """Explanations (montage, heatmap NIfTI, JSON) of the predicted ``scans`` in ``out``;
    returns the failure, if any, instead of raising: the predictions stand."""
    from volnas.deploy.predict import failure_from
    from volnas.explain.api import explain_scans

    try:
        explain_scans(bundle.path, scans, out, console=console)
    except Exception as e:  # noqa: BLE001 - predictions stand; the explain step is reported
        return [failure_from("--explain", str(out), e)]
    return []
