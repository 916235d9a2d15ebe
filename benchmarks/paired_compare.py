"""Compare finished runs on the same test scans: each run's test metrics with their 95 %
intervals, and the paired bootstrap difference of AUC against the first run (patients
resampled together), which says whether a difference is within noise.

    python benchmarks/paired_compare.py resnet=RUN_A searched=RUN_B random=RUN_C \
        [--out compare.md]

A run is a training run folder or a search folder (its ``final/`` is used); each must hold
``metrics.json`` and ``predictions_test.csv`` of the same test scans.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from volnas.training.metrics import paired_bootstrap_auc


def load_run(folder: Path) -> tuple[dict, list[dict[str, str]]]:
    """(test metrics, prediction rows) of a run folder or of a search's final run."""
    if (folder / "final" / "metrics.json").is_file():
        folder = folder / "final"
    metrics = json.loads((folder / "metrics.json").read_text())
    with open(folder / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{folder / 'predictions_test.csv'}: no predictions")
    return metrics, rows


def probs_of(rows: list[dict[str, str]], classes: list[str]) -> np.ndarray:
    return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])


def fmt_ci(m: dict, key: str) -> str:
    ci = (m.get("ci") or {}).get(key)
    v = m.get(key)
    if v is None:
        return "-"
    return f"{v:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER, the first is the reference")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown)")
    args = ap.parse_args()
    named = []
    for item in args.runs:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"{item!r}: expected NAME=RUN_FOLDER")
        named.append((name, *load_run(Path(path))))
    ref_name, ref_m, ref_rows = named[0]
    classes = list(ref_m["class_names"])
    ids = [r["scan_id"] for r in ref_rows]
    labels = np.array([classes.index(r["label"]) for r in ref_rows])
    groups = np.array([r["patient_id"] for r in ref_rows])
    ref_p = probs_of(ref_rows, classes)
    lines = ["| run | params | test AUC (95 % CI) | ACC | F1 | weighted F1 | ECE raw -> calibrated "
             f"| AUC - {ref_name} (95 % CI, paired) |", "|---|---|---|---|---|---|---|---|"]
    for name, m, rows in named:
        if [r["scan_id"] for r in rows] != ids:
            raise SystemExit(f"{name}: its test scans differ from {ref_name}'s")
        cal = m.get("calibration") or {}
        ece = (f"{cal['ece']:.3f} -> {cal['ece_calibrated']:.3f}"
               if "ece" in cal and "ece_calibrated" in cal else "-")
        if name == ref_name:
            diff = "-"
        else:
            d = paired_bootstrap_auc(labels, probs_of(rows, classes), ref_p, classes,
                                     m.get("positive_class"), groups)
            diff = (f"{d['diff']:+.3f} ({d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})"
                    + (", within noise" if d["within_noise"] else ""))
        wf1 = (m.get("weighted") or {}).get("f1")  # its CI: ci["f1_weighted"]
        lines.append(f"| {name} | {m.get('params', 0) / 1e6:.2f} M | {fmt_ci(m, 'auc')} | "
                     f"{fmt_ci(m, 'accuracy')} | {fmt_ci(m, 'f1')} | "
                     f"{'-' if wf1 is None else fmt_ci({**m, 'f1_weighted': wf1}, 'f1_weighted')} | "
                     f"{ece} | {diff} |")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
