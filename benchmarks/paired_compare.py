"""Compare finished runs on the same test scans: test metrics (one run: with its 95 %
intervals; several seeds: mean +- std), and the paired bootstrap difference of AUC against
the first name (patients resampled together; for several seeds, of the seeds' mean AUCs),
which says whether a difference is within noise.

    python benchmarks/paired_compare.py resnet=RUN_A searched=RUN_B1,RUN_B2,RUN_B3 \
        [--out compare.md]

A run is a training run folder or a search folder (its ``final/`` is used); each must hold
``metrics.json`` and ``predictions_test.csv`` of the same test scans. A ``volnas cv`` folder
compares instead on the training split's held-out predictions (``cv.json``,
``predictions_oof.csv``): give only CV folders of the same folds (``--folds``, ``--cv-seed``). ``--latency`` also
measures each run's network on this CPU (batch 1, as ``bench_run_latency.py``) and adds
milliseconds per scan to the table and the plot: time it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import numpy as np

from volnas.training.metrics import paired_bootstrap_auc


def load_run(folder: Path) -> tuple[dict, list[dict[str, str]]]:
    """(test metrics, prediction rows) of a run folder or of a search's final run; of a
    ``volnas cv`` folder, its pooled held-out metrics and predictions of the training split."""
    if (folder / "final" / "metrics.json").is_file():
        folder = folder / "final"
    if (folder / "cv.json").is_file():
        metrics, path = json.loads((folder / "cv.json").read_text())["oof"], "predictions_oof.csv"
    else:
        metrics, path = json.loads((folder / "metrics.json").read_text()), "predictions_test.csv"
    with open(folder / path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{folder / path}: no predictions")
    return metrics, rows


def probs_of(rows: list[dict[str, str]], classes: list[str]) -> np.ndarray:
    return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])


def metric(m: dict, key: str) -> float | None:
    if key == "f1_weighted":
        return (m.get("weighted") or {}).get("f1")
    if key in ("ece", "ece_calibrated"):
        return (m.get("calibration") or {}).get(key)
    if key == "params":
        return m.get("params", 0) / 1e6
    if key == "gflops":  # multiply-adds counted twice, one scan
        return m["flops_per_scan"] / 1e9 if m.get("flops_per_scan") else None
    return m.get(key)


def cell(runs: list[dict], key: str) -> str:
    """One run: value (95 % CI); several: mean +- std over them."""
    vals = [metric(m, key) for m in runs]
    if any(v is None for v in vals):
        return "-"
    if len(vals) == 1:
        ci = (runs[0].get("ci") or {}).get(key)
        return f"{vals[0]:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
    return f"{statistics.mean(vals):.3f} +- {statistics.stdev(vals):.3f}"


COLUMNS = (("params", "params (M)"), ("gflops", "GFLOPs / scan"), ("auc", "test AUC"),
           ("accuracy", "ACC"), ("precision", "precision"), ("sensitivity", "sensitivity"),
           ("f1", "F1"), ("f1_weighted", "weighted F1"), ("ece", "ECE raw"),
           ("ece_calibrated", "ECE calibrated"))


def measure_latency(folders: list[Path], threads: int, repeats: int = 7) -> list[float]:
    """Milliseconds per scan of each run's network (batch 1, channels_last_3d, median of
    cold-cache repeats; the weights do not change the time)."""
    import torch
    from bench_run_latency import network_ms

    torch.set_num_threads(threads)
    return [network_ms(folder, repeats)[0] for folder in folders]


def plot(named: list[tuple[str, list[tuple[dict, list]]]], path: Path,
         ms: dict[str, list[float]] | None = None, ylabel: str = "test AUC") -> None:
    """AUC (``ylabel``) against parameters (and against ms per scan when measured), log
    scale, one colour per name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("parameters (M)", {n: [metric(m, "params") for m, _ in r] for n, r in named})]
    if ms:
        panels.append(("CPU ms / scan (batch 1)", ms))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
    for ax, (xlabel, xs_of) in zip(axes[0], panels, strict=True):
        for i, (name, runs) in enumerate(named):
            colour = f"C{i}"
            xs = xs_of[name]
            ys = [metric(m, "auc") for m, _ in runs]
            ax.scatter(xs, ys, color=colour, alpha=0.5, s=22)
            ax.scatter([statistics.mean(xs)], [statistics.mean(ys)], color=colour, marker="X",
                       s=90, label=f"{name} (n={len(runs)})")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+",
                    help="NAME=RUN[,RUN...] (seeds of one name), the first name is the reference")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="also plot test AUC against parameters (and ms per scan with "
                         "--latency) (PNG): a dot per run, a cross per name at its mean")
    ap.add_argument("--latency", action="store_true",
                    help="also measure each network's CPU ms per scan (batch 1)")
    ap.add_argument("--threads", type=int, default=1, help="threads for --latency [1]")
    args = ap.parse_args()
    named = []
    ms: dict[str, list[float]] = {}
    for item in args.runs:
        name, _, paths = item.partition("=")
        if not paths:
            raise SystemExit(f"{item!r}: expected NAME=RUN_FOLDER[,RUN_FOLDER...]")
        folders = [Path(p) for p in paths.split(",")]
        named.append((name, [load_run(f) for f in folders]))
        if args.latency:
            ms[name] = measure_latency(folders, args.threads)
    ref_name, ref_runs = named[0]
    classes = list(ref_runs[0][0]["class_names"])
    ref_rows = ref_runs[0][1]
    ids = [r["scan_id"] for r in ref_rows]
    labels = np.array([classes.index(r["label"]) for r in ref_rows])
    groups = np.array([r["patient_id"] for r in ref_rows])
    ref_p = [probs_of(rows, classes) for _, rows in ref_runs]
    extra = " ms / scan |" if ms else ""
    cv = "split" in ref_runs[0][0] and "held-out" in str(ref_runs[0][0]["split"])
    heads = [h.replace("test AUC", "CV held-out AUC") if cv else h for _, h in COLUMNS]
    lines = ["| run | seeds | " + " | ".join(heads)
             + f" |{extra} AUC - {ref_name} (95 % CI, paired) |",
             "|---|---|" + "---|" * (len(COLUMNS) + bool(ms)) + "---|"]
    for name, runs in named:
        for _, rows in runs:
            if [r["scan_id"] for r in rows] != ids:
                raise SystemExit(f"{name}: its test scans differ from {ref_name}'s")
        if name == ref_name:
            diff = "-"
        else:
            d = paired_bootstrap_auc(labels, [probs_of(rows, classes) for _, rows in runs],
                                     ref_p, classes, runs[0][0].get("positive_class"), groups)
            diff = (f"{d['diff']:+.3f} ({d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})"
                    + (", within noise" if d["within_noise"] else ""))
        metrics = [m for m, _ in runs]
        latency = ""
        if ms:
            v = ms[name]
            latency = f" {statistics.mean(v):.1f}" + (
                f" +- {statistics.stdev(v):.1f} |" if len(v) > 1 else " |")
        lines.append(f"| {name} | {len(runs)} | "
                     + " | ".join(cell(metrics, k) for k, _ in COLUMNS) + f" |{latency} {diff} |")
    text = "\n".join(lines)
    print(text)
    if args.plot is not None:
        plot(named, args.plot, ms or None, "CV held-out AUC" if cv else "test AUC")
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
