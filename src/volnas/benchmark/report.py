"""report.json of a benchmark: every finished cell's metrics and wall times, summarised over seeds."""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volnas.benchmark.cells import Cell, cell_name
from volnas.benchmark.markdown import METRICS, OP_METRICS, render_markdown
from volnas.core.files import atomic_write_text
from volnas.search.run import decision_from_log, search_run_seconds
from volnas.training.config import TrainConfig
from volnas.training.device import resolve_device
from volnas.training.metrics import paired_bootstrap_auc, summarize_seeds
from volnas.training.rundir import history_seconds


def machine_info(device: str) -> dict[str, Any]:
    """Where the benchmark ran."""
    dev = resolve_device(device)
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "device": str(dev)}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _val_auc(run_dir: Path, best_epoch: Any) -> float | None:
    """Validation AUC of the checkpoint a run kept (its best epoch), from history.csv."""
    path = run_dir / "history.csv"
    if best_epoch is None or not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if str(r.get("epoch")) == str(best_epoch)]
    try:
        return float(rows[-1]["val_auc"]) if rows else None
    except (KeyError, ValueError):
        return None


def _run_record(cell: Cell) -> dict[str, Any] | None:
    """A finished cell's test metrics and wall times, from the files it wrote."""
    if cell.state != "done" or not cell.metrics_file.is_file():
        return None
    metrics = json.loads(cell.metrics_file.read_text())
    rec: dict[str, Any] = {
        "seed": cell.seed,
        "dir": str(cell.dir),
        "metrics_file": str(cell.metrics_file),
        **{k: metrics.get(k) for k in (*METRICS, "specificity", "n_scans", "positive_class",
                                       "params", "model_size_mb", "flops_per_scan",
                                       "best_epoch")},
        "f1_weighted": (metrics.get("weighted") or {}).get("f1"),
        # what a choice between rows may rest on (the test split only confirms it)
        "val_auc": _val_auc(cell.metrics_file.parent, metrics.get("best_epoch")),
        # at the run's validation operating point (runs trained before it have None)
        "op_sensitivity": (metrics.get("operating_point") or {}).get("sensitivity"),
        "op_specificity": (metrics.get("operating_point") or {}).get("specificity"),
        "ci": metrics.get("ci"),
        "ci_level": metrics.get("ci_level"),
        "ci_unit": metrics.get("ci_unit"),
    }
    # Wall times from the histories (they add up the epochs of every resumed process; the
    # JSON of runs made before that counted only the last process).
    if cell.kind == "train":
        rec["seconds"] = _first(history_seconds(cell.dir), metrics.get("train_seconds"))
    else:
        result = json.loads(cell.done_file.read_text())
        logged = search_run_seconds(cell.dir)
        total = _first(logged["total_seconds"], result.get("total_seconds"))
        retrain = _first(logged["retrain_seconds"], metrics.get("train_seconds"))
        # "search": everything before the retrain, whatever the strategy spends it on (search
        # epochs and probes; the probes alone for random; supernet and evolution)
        before = (total - retrain if total is not None and retrain is not None
                  else _first(logged["search_seconds"], result.get("search_seconds")))
        rec.update({"seconds": before, "total_seconds": total, "train_seconds": retrain,
                    "genotype": result.get("genotype"),
                    "decision": result.get("decision")
                    or decision_from_log(cell.dir, result.get("space", ""),
                                         result.get("augment_search"))})
    return rec


def build_report(
    cells: Sequence[Cell], configs: Mapping[Cell, TrainConfig], context: Mapping[str, Any],
    failed: Mapping[Cell, str],
) -> dict[str, Any]:
    """report.json's content from the cells' own files; ``context``: command, machine, data."""
    rows = []
    order = list(dict.fromkeys((c.name, c.kind) for c in cells))
    for name, kind in order:
        mine = [c for c in cells if (c.name, c.kind) == (name, kind)]
        runs = [r for r in (_run_record(c) for c in mine) if r is not None]
        keys = (*METRICS, *OP_METRICS, "val_auc", "model_size_mb", "params", "seconds", "total_seconds")
        summary = {k: s._asdict() for k, s in summarize_seeds(runs, keys).items()}
        cfg = configs[mine[0]]
        row: dict[str, Any] = {
            "name": cell_name(name), "model": name, "kind": kind,
            "input": list(cfg.preprocess.input_shape), "slices": cfg.preprocess.slices,
            "seeds": [c.seed for c in mine], "n_done": len(runs), "runs": runs,
            "summary": summary,
            "failed": {str(c.seed): failed[c] for c in mine if c in failed},
        }
        if kind == "search":
            row["search_input"] = list(cfg.search_preprocess().input_shape)
        row["_predictions"] = [c.metrics_file.parent / "predictions_test.csv" for c in mine
                               if _run_record(c) is not None]
        rows.append(row)
    compare_to_best_baseline(rows)
    for row in rows:
        del row["_predictions"]
    first = configs[cells[0]]
    some_search = next((configs[c] for c in cells if c.kind == "search"), None)
    return {
        "command": context["command"],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": context["machine"],
        "data": context["data"],
        "preprocess": first.preprocess.model_dump(mode="json")
        | {"sampling": {"train": "random", "evaluation": "symmetrical"}},
        "training": {k: getattr(first, k) for k in ("epochs", "batch_size", "optimizer", "lr",
                                                    "weight_decay", "augment", "select_metric",
                                                    "patience")},
        "search": None if some_search is None else {
            k: getattr(some_search, k) for k in ("search_epochs", "search_slices", "search_size",
                                                 "topk", "probe_epochs", "retrain_epochs",
                                                 "weight_optimizer", "weight_lr", "arch_lr")},
        "seeds": sorted({c.seed for c in cells}),
        "complete": all(c.state == "done" for c in cells),
        "rows": rows,
        "failed": [{"dir": str(c.dir), "error": e} for c, e in failed.items()],
    }


def read_test_predictions(path: Path) -> dict[str, tuple[str, str, dict[str, float]]]:
    """``{scan_id: (patient_id, label, {class: probability})}`` of a run's
    predictions_test.csv: the model's own probabilities (``p_raw_*`` when the file also
    holds calibrated ones, else ``p_*``), those its reported AUC was computed from."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        prefix = "p_raw_" if any(k.startswith("p_raw_") for k in fields) else "p_"
        classes = [k[len(prefix):] for k in fields
                   if k.startswith(prefix) and (prefix == "p_raw_" or not k.startswith("p_raw_"))]
        out = {}
        for line, r in enumerate(reader, start=2):
            try:
                out[r["scan_id"]] = (r["patient_id"], r["label"],
                                     {c: float(r[prefix + c]) for c in classes})
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path} line {line}: not a predictions row ({e})") from e
    return out


def compare_to_best_baseline(rows: list[dict[str, Any]]) -> None:
    """Add ``vs_baseline`` to every row but the best baseline (trained row with the highest
    mean test AUC): the AUC difference with a paired, patient-grouped bootstrap interval on
    the test scans both have (paired by scan_id), and whether it is within noise. Rows that
    cannot be compared get the reason instead."""
    base = [r for r in rows if r["kind"] == "train" and r["summary"]["auc"]["mean"] is not None]
    if not base:
        return
    best = max(base, key=lambda r: r["summary"]["auc"]["mean"])
    best["best_baseline"] = True
    try:
        base_runs = [read_test_predictions(p) for p in best["_predictions"]]
    except (OSError, ValueError) as e:
        for r in rows:
            r["vs_baseline"] = {"baseline": best["name"], "error": str(e)}
        return
    for row in rows:
        if row is best or not row["runs"]:
            continue
        rec: dict[str, Any] = {"baseline": best["name"]}
        try:
            mine = [read_test_predictions(p) for p in row["_predictions"]]
            rec |= _paired(mine, base_runs, row["runs"][0])
        except (OSError, ValueError) as e:
            rec["error"] = str(e)
        row["vs_baseline"] = rec


def _paired(mine: list[dict[str, Any]], base: list[dict[str, Any]],
            run: Mapping[str, Any]) -> dict[str, Any]:
    common = sorted(set.intersection(*(set(p) for p in mine + base)))
    if not common:
        raise ValueError("no test scan in common with the baseline")
    first = base[0]
    classes = list(first[common[0]][2])
    for p in mine + base:
        if list(p[common[0]][2]) != classes:
            raise ValueError(f"classes differ from the baseline's {classes}")
        if any(p[s][1] != first[s][1] for s in common):
            raise ValueError("the same scan_id has different labels than in the baseline")
    labels = np.array([classes.index(first[s][1]) for s in common])
    groups = [first[s][0] for s in common]

    def stack(p: dict[str, Any]) -> np.ndarray:
        return np.array([[p[s][2][c] for c in classes] for s in common])

    out = paired_bootstrap_auc(labels, [stack(p) for p in mine], [stack(p) for p in base],
                               classes, run.get("positive_class"), groups)
    return out | {"runs": len(mine), "baseline_runs": len(base)}


def data_summary(data: str) -> dict[str, Any]:
    """Path, classes and split sizes of the benchmark's data."""
    from volnas.data.dataset import open_source

    try:
        src = open_source(data)
    except (ValueError, OSError) as e:
        return {"path": data, "error": str(e)}
    splits = {s: sum(r.split == s for r in src.rows) for s in ("train", "val", "test")}
    return {"path": data, "classes": src.class_names, "positive_class": src.positive_class,
            "scans": splits, "patients": len({r.patient_id for r in src.rows})}


def write_report(
    out: Path, cells: Sequence[Cell], configs: Mapping[Cell, TrainConfig],
    context: Mapping[str, Any], failed: Mapping[Cell, str],
) -> dict[str, Any]:
    """Write report.json, report.md and f1_vs_size.png; returns the report."""
    from volnas.training.plots import plot_scatter

    report = build_report(cells, configs, context, failed)
    points = []
    for row in report["rows"]:
        size, f1 = row["summary"]["model_size_mb"], row["summary"]["f1"]
        if size["mean"] and f1["mean"] is not None:
            label = row["name"] + (" (searched)" if row["kind"] == "search" else "")
            points.append({"label": label, "x": size["mean"], "y": f1["mean"],
                           "yerr": f1["std"] or None, "xerr": size["std"] or None})
    if points:
        plot_scatter(points, "model size (MB, params x 4 bytes)", "test F1", out / "f1_vs_size.png",
                     title=f"F1 against model size (mean +- std over {len(report['seeds'])} seeds)",
                     logx=True)
    report["plot"] = "f1_vs_size.png" if points else None
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", render_markdown(report))
    return report

