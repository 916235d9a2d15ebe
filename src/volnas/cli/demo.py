"""The main job on built-in data (minutes on 2 CPU cores):

synthesise chest CT -> index -> train a baseline -> search a compact net (search, probe,
retrain, test once) -> explain a few test scans of each -> compare.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from volnas.core.markup import make_console
from volnas.data.index import build_index
from volnas.data.manifest import summary_table, write_manifest
from volnas.data.synth import synthesize
from volnas.search.run import load_search_config, run_search
from volnas.training.config import TrainConfig
from volnas.training.run import run_training

DEMO_MODEL = "resnet3d_18"
PREPROCESS = {"slices": 16, "size": (48, 48)}


def next_free(root: Path, stem: str) -> Path:
    """``root/stem-001``, ``-002``, ...: the first that does not exist (runs are never overwritten)."""
    i = 1
    while (root / f"{stem}-{i:03d}").exists():
        i += 1
    return root / f"{stem}-{i:03d}"


def _explain(run_dir: Path, manifest: Path, out: Path, masks: Path, console: Console) -> dict:
    from volnas.explain.api import explain_test_scans
    from volnas.explain.methods import DEFAULT_METHOD

    results = explain_test_scans(run_dir, manifest, out, n=3, method=DEFAULT_METHOD,
                                 masks=masks, console=console)
    hits = [r["faithfulness"]["pointing_hit"] for r in results
            if r.get("faithfulness") and "pointing_hit" in r["faithfulness"]]
    return {"n": len(results), "hits": sum(hits), "with_mask": len(hits)}


def run_demo(out: Path, *, epochs: int = 10, search: bool = True, seed: int = 0,
             console: Console | None = None) -> Path:
    """Run the demo into a fresh folder under ``out``; returns that folder."""
    console = console or make_console()
    t0 = time.perf_counter()
    root = next_free(out, "demo")
    data_dir = root / "data"
    steps = 5 if search else 4
    console.rule(f"[bold]1/{steps} synthesise chest CT (DICOM series in HU, lesion masks)")
    # "easy" findings: learnable from 144 training scans in minutes (the default
    # "realistic" data is a much harder task; see volnas.data.synth)
    res = synthesize(data_dir, scans=240, fmt="dicom", classes=2, shape=(20, 48, 48), seed=seed,
                     difficulty="easy")
    console.print(f"{len(res.scans)} scans, classes {escape(str(res.class_names))}, written to {escape(str(data_dir))}")
    console.rule(f"[bold]2/{steps} index: patient-grouped, stratified splits")
    index = build_index(data_dir, split=(0.6, 0.2, 0.2), seed=seed)
    manifest = root / "manifest.csv"
    write_manifest(index, manifest)
    console.print(summary_table(index.rows))
    cache = str(root / "cache")

    console.rule(f"[bold]3/{steps} train {DEMO_MODEL}: epoch chosen on validation, test once")
    cfg = TrainConfig.model_validate({
        "data": str(manifest), "model": DEMO_MODEL, "epochs": epochs, "batch_size": 8,
        "seed": seed, "preprocess": PREPROCESS, "cache_dir": cache})
    baseline_dir = root / "baseline"
    results: dict[str, dict[str, Any]] = {DEMO_MODEL: run_training(cfg, baseline_dir, console=console)}
    run_dirs = {DEMO_MODEL: baseline_dir}

    if search:
        console.rule(f"[bold]4/{steps} search covidnet3d-s (16x32x32), probe top 2, retrain, test once")
        scfg = load_search_config(None, {
            "data": str(manifest), "space": "covidnet3d-s", "search_epochs": 3, "topk": 2,
            "probe_epochs": 1, "retrain_epochs": epochs, "batch_size": 8, "seed": seed,
            "search_size": (32, 32), "preprocess": PREPROCESS,
            # chosen on the demo's validation split, 3 seeds: 0.991 against 0.967 for "end"
            # (docs/results/demo-strides.md)
            "stride_rule": "cell1", "cache_dir": cache})
        result = run_search(scfg, root / "search", console=console)
        results["searched " + result["genotype"].split("[")[0]] = result["test"]
        run_dirs["searched " + result["genotype"].split("[")[0]] = root / "search" / "final"

    from volnas.explain.methods import DEFAULT_METHOD, method_info

    label = method_info(DEFAULT_METHOD).label
    console.rule(f"[bold]{steps}/{steps} explain test scans ({label}; PNG montage + NIfTI on "
                 "the scan grid)")
    explained = {}
    for name, run_dir in run_dirs.items():
        explained[name] = _explain(run_dir, manifest, root / "explain" / name.split()[-1],
                                   data_dir, console)

    table = Table(title=f"volnas demo — test split read once per model ({time.perf_counter() - t0:.0f} s)")
    for col in ("model", "params", "size MB", "accuracy", "F1", "AUC",
                "sens / spec at val threshold", f"{label} pointing hits"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in results.items():
        e = explained[name]
        auc = "n/a" if m.get("auc") is None else f"{m['auc']:.3f}"
        op = m.get("operating_point") or {}
        at = ("n/a" if op.get("sensitivity") is None or op.get("specificity") is None
              else f"{op['sensitivity']:.2f} / {op['specificity']:.2f}")
        table.add_row(escape(name), f"{m['params']:,}", f"{m['model_size_mb']:.2f}",
                      f"{m['accuracy']:.3f}", f"{m['f1']:.3f}", auc, at,
                      f"{e['hits']:g}/{e['with_mask']}")
    console.print(table)
    console.print("sens / spec at val threshold: the test split at the threshold on P(covid) "
                  "each run chose on its validation split (Youden); accuracy and F1 call a scan "
                  "covid when P(covid) > 0.5.")
    console.print(f"everything is under [bold]{escape(str(root))}[/]: baseline/ and search/final/ are run folders "
                  "(metrics.json, curves.png, confusion_test.png, roc_test.png, model.safetensors); "
                  "explain/ holds montages (PNG) and heatmaps (NIfTI) to open over the scans.")
    return root


def demo_cmd(
    out: Path = typer.Option(Path("volnas_demo"), "--out", help="Demo folder (a new run each time)."),
    epochs: int = typer.Option(10, "--epochs", help="Training (and retrain) epochs."),
    search: bool = typer.Option(True, "--search/--no-search", help="Include the architecture search."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Synthesise chest CT, train a baseline, search a compact net, explain both, compare."""
    from volnas.cli.common import console

    run_demo(out, epochs=epochs, search=search, seed=seed, console=console)
