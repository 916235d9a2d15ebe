"""The main job on built-in data: synthesise -> index -> train -> evaluate (minutes on 2 CPU cores)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from volnas.data.index import build_index, summary_table, write_manifest
from volnas.data.synth import synthesize
from volnas.training.config import TrainConfig
from volnas.training.run import run_training

DEMO_MODEL = "mc3_18"


def next_free(root: Path, stem: str) -> Path:
    """``root/stem-001``, ``-002``, ...: the first that does not exist (runs are never overwritten)."""
    i = 1
    while (root / f"{stem}-{i:03d}").exists():
        i += 1
    return root / f"{stem}-{i:03d}"


def run_demo(out: Path, *, epochs: int = 6, seed: int = 0, console: Console | None = None) -> Path:
    """Run the demo into a fresh folder under ``out``; returns that folder."""
    console = console or Console()
    t0 = time.perf_counter()
    root = next_free(out, "demo")
    data_dir = root / "data"
    console.rule("[bold]1/3 synthesise chest CT (DICOM series, HU)")
    res = synthesize(data_dir, scans=60, fmt="dicom", classes=2, shape=(24, 64, 64), seed=seed)
    console.print(f"{len(res.scans)} scans, classes {res.class_names}, written to {data_dir}")
    console.rule("[bold]2/3 index: patient-grouped, stratified splits")
    index = build_index(data_dir, split=(0.6, 0.2, 0.2), seed=seed)
    manifest = root / "manifest.csv"
    write_manifest(index, manifest)
    console.print(summary_table(index.rows))
    console.rule(f"[bold]3/3 train {DEMO_MODEL}, choose the epoch on validation, test once")
    cfg = TrainConfig.model_validate({
        "data": str(manifest), "model": DEMO_MODEL, "epochs": epochs, "batch_size": 6,
        "seed": seed, "preprocess": {"slices": 16, "size": (64, 64)},
        "cache_dir": str(root / "cache"),
    })
    run_dir = root / "run"
    metrics = run_training(cfg, run_dir, console=console)
    console.rule("[bold]done")
    console.print(
        f"test: accuracy {metrics['accuracy']:.3f}, F1 {metrics['f1']:.3f}, AUC "
        f"{metrics['auc'] if metrics['auc'] is None else round(metrics['auc'], 3)} "
        f"({metrics['n_scans']} scans)  —  {time.perf_counter() - t0:.0f} s in all"
    )
    console.print(f"run folder: [bold]{run_dir}[/] (metrics.json, history.csv, curves.png, "
                  "confusion_test.png, roc_test.png, model.safetensors)")
    return root
