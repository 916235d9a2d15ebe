"""report.md of a benchmark: settings, the results table, every run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from volnas.search.run import UNDECIDED_RATIO

METRICS = ("accuracy", "precision", "sensitivity", "f1", "f1_weighted", "auc")
HEADERS = {"accuracy": "ACC", "precision": "precision", "sensitivity": "sensitivity", "f1": "F1",
           "f1_weighted": "F1 (weighted)", "auc": "AUC", "val_auc": "val AUC",
           "op_sensitivity": "sensitivity at val threshold",
           "op_specificity": "specificity at val threshold"}
# shown when some run has them: the test split at the run's validation operating point
OP_METRICS = ("op_sensitivity", "op_specificity")


def fmt_mean_std(s: Mapping[str, Any], digits: int = 4, total: int | None = None) -> str:
    """``0.8855 ± 0.0123``; ``n/a`` when no run has the value; ``(n=k)`` when some lack it;
    one run has no spread, so its value stands alone."""
    if s["mean"] is None:
        return "n/a"
    text = f"{s['mean']:.{digits}f}"
    if s["n"] > 1:
        text += f" ± {s['std']:.{digits}f}"
    if total is not None and s["n"] < total:
        text += f" (n={s['n']})"
    return text


def fmt_seconds(s: Mapping[str, Any]) -> str:
    """Wall time mean ± std in s, min or h (the unit of the mean)."""
    if s["mean"] is None:
        return "n/a"
    mean, std = float(s["mean"]), float(s["std"] or 0.0)
    unit, div = ("s", 1.0) if mean < 120 else (("min", 60.0) if mean < 7200 else ("h", 3600.0))
    spread = f" ± {std / div:.1f}" if s.get("n", 0) > 1 else ""
    return f"{mean / div:.1f}{spread} {unit}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: settings, the Table 3 style table, the plot, and every run."""
    m, d, p, t = report["machine"], report["data"], report["preprocess"], report["training"]
    n_seeds = len(report["seeds"])
    lines = ["# volnas benchmark", ""]
    if not report["complete"]:
        done = sum(r["n_done"] for r in report["rows"])
        total = sum(len(r["seeds"]) for r in report["rows"])
        lines += [f"**Incomplete:** {done} of {total} runs finished; run the command again to "
                  "resume.", ""]
    gpu = f" ({m['gpu']})" if m.get("gpu") else ""
    scans = d.get("scans") or {}
    lines += [
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"torch {m['torch']}, device {m['device']}{gpu}",
        f"- data: `{d['path']}`"
        + (f" — classes {', '.join(d['classes'])} (positive: {d['positive_class']}); "
           f"{scans.get('train')} train / {scans.get('val')} val / {scans.get('test')} test "
           f"scans of {d['patients']} patients, split by patient" if "classes" in d else ""),
        f"- preprocessing: {p['slices']} slices x {p['size'][0]}x{p['size'][1]}"
        + (f" (resize to {p['resize'][0]}x{p['resize'][1]}, centre crop)" if p.get("resize") else "")
        + ", intensity " + _intensity(p)
        + "; slice sampling random (training), symmetrical (evaluation)",
        f"- training: {t['epochs']} epochs, batch {t['batch_size']}, {t['optimizer']} lr {t['lr']}, "
        f"augmentation {t['augment']}, checkpoint chosen by validation {t['select_metric']}",
    ]
    if report["search"]:
        s = report["search"]
        lines.append(
            f"- search: {s['search_epochs']} search epochs"
            + (f" at {s['search_slices'] or p['slices']} slices x "
               f"{'x'.join(map(str, s['search_size'] or p['size']))}")
            + f", top-{s['topk']} probed for {s['probe_epochs']} epochs, best retrained "
            f"{s['retrain_epochs']} epochs")
    lines += [f"- seeds: {', '.join(map(str, report['seeds']))}", "",
              f"## Test results (mean ± std over {n_seeds} seeds)", ""]
    compared = any("vs_baseline" in r for r in report["rows"])
    shown = METRICS + ("val_auc",) + (OP_METRICS if any(
        (r["summary"].get(k) or {}).get("mean") is not None
        for r in report["rows"] for k in OP_METRICS) else ())
    head = ["model", "size (MB)", "input", "slices", *[HEADERS[k] for k in shown],
            *(["ΔAUC vs best baseline (95% CI)"] if compared else []), "wall time"]
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in report["rows"]:
        s = r["summary"]
        size = s["model_size_mb"]
        size_text = "n/a" if size["mean"] is None else (
            f"{size['mean']:.2f}" + (f" ± {size['std']:.2f}" if size["std"] else ""))
        name = r["name"] + (" (searched)" if r["kind"] == "search" else "")
        if r["n_done"] < len(r["seeds"]):
            name += f" [{r['n_done']}/{len(r['seeds'])} runs]"
        wall = ("train " if r["kind"] == "train" else "search ") + fmt_seconds(s["seconds"])
        if r["kind"] == "search" and s["total_seconds"]["mean"] is not None:
            wall += f" (total {fmt_seconds(s['total_seconds'])})"
        lines.append("| " + " | ".join([
            name, size_text, "x".join(map(str, r["input"])), str(r["slices"]),
            *[fmt_mean_std(s[k], total=r["n_done"]) for k in shown],
            *([fmt_vs_baseline(r)] if compared else []), wall]) + " |")
    lines += [
        "",
        f"ACC is micro accuracy over the test scans; precision, sensitivity and F1 are for the "
        f"positive class{' ' + repr(d.get('positive_class')) if d.get('positive_class') else ''} "
        "(the other classes together as negative); F1 (weighted) is the support-weighted mean "
        "of the per-class F1 (scikit-learn's average='weighted'; papers on imbalanced "
        "MedMNIST data often report an averaged F1 without saying so); AUC from softmax "
        "probabilities. val AUC: the validation AUC of the checkpoint each run kept (its "
        "best epoch); choices between rows rest on it, the test split only confirms them. "
        + ("Sensitivity and specificity at val threshold: the test split at the threshold "
           "on calibrated P(positive) that each run chose on its validation split "
           "(operating_point, default Youden). " if shown != METRICS else "")
        + "Size is "
        "parameters x 4 bytes (MB of 2^20 bytes); std uses ddof=1. Wall time: training of one "
        "run (baselines) or, for searches, everything before the retrain of the pick (search "
        "epochs and probes; the probes of a random search; a supernet and its evolution), with "
        "the retrain in the total. Epoch times are summed from the runs' history.csv files (a "
        "run resumed after a stop counts the epochs of every process; setup, test and an "
        "epoch cut off by a stop are not counted); stages without epochs (a random search's "
        "draws, an evolution's generations) are timed by the search itself.",
        "",
    ]
    if compared:
        lines += [
            "ΔAUC: the row's mean test AUC minus the best baseline's (the trained model with "
            "the highest mean AUC), on the test scans both have, with a 95% paired bootstrap "
            "interval (1000 resamples of patients, each patient's scans together; both "
            "models scored on every resample). \"within noise\": the interval contains 0, "
            "so these test scans cannot tell the two apart.",
            "",
        ]
    if report.get("plot"):
        lines += [f"![F1 against model size]({report['plot']})", ""]
    lines += ["## Runs", "", "AUC with its 95% bootstrap interval over the test patients.", "",
              "| model | seed | ACC | F1 | AUC | val AUC | size (MB) | seconds | folder |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        for run in r["runs"]:
            lines.append(
                f"| {r['name']} | {run['seed']} | {_f(run['accuracy'])} | {_f(run['f1'])} | "
                f"{_f(run['auc'])}{_ci(run, 'auc')} | {_f(run.get('val_auc'))} | "
                f"{_f(run['model_size_mb'], 2)} | {_f(run['seconds'], 1)} | "
                f"`{run['dir']}` |")
    searched = [(r["name"], run) for r in report["rows"] for run in r["runs"] if run.get("genotype")]
    if searched:
        lines += ["", "Searched architectures:", ""]
        lines += [f"- {name} seed {run['seed']}: `{run['genotype']}`{_decided(run)}"
                  for name, run in searched]
        lines += ["", "(Entropy of the final architecture / augmentation distributions as a "
                  "share of their start's: uniform, except the augmentation under aug_prior "
                  "'probability', which starts with each probability level equal; above "
                  f"{UNDECIDED_RATIO:.0%} the search has not decided and its argmax is close "
                  "to the start's: a random draw from a uniform start, mostly no augmentation "
                  "from the probability prior.)"]
    if report["failed"]:
        lines += ["", "## Failed runs", ""]
        lines += [f"- `{f['dir']}`: {f['error']}" for f in report["failed"]]
    return "\n".join(lines) + "\n"


def fmt_vs_baseline(row: Mapping[str, Any]) -> str:
    """``+0.0123 [-0.0300, 0.0541], within noise``; the best baseline itself is marked."""
    if row.get("best_baseline"):
        return "best baseline"
    v = row.get("vs_baseline")
    if not v:
        return "n/a"
    if "error" in v or v.get("diff") is None:
        return "n/a" + (f" ({v['error']})" if "error" in v else "")
    text = f"{v['diff']:+.4f}"
    if v.get("ci"):
        text += f" [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}]"
    return text + (", within noise" if v["within_noise"] else "")


def _ci(run: Mapping[str, Any], key: str) -> str:
    ci = (run.get("ci") or {}).get(key)
    return f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""


def _decided(run: Mapping[str, Any]) -> str:
    d = run.get("decision") or {}
    parts = [f"{name} entropy {v['entropy_ratio']:.1%} of its start"
             + (f", {v['skip_layers']}/{v['skippable_layers']} layers skip"
                if "skip_layers" in v else "") for name, v in d.items()]
    return f" ({', '.join(parts)})" if parts else ""


def _intensity(p: Mapping[str, Any]) -> str:
    lo, hi = p["window"]
    if p["intensity"] == "auto":
        return f"auto (HU window [{lo:g}, {hi:g}] for CT, min-max otherwise) to [0, 1]"
    if p["intensity"] in ("window", "range"):
        return f"{p['intensity']} [{lo:g}, {hi:g}] to [0, 1]"
    return f"{p['intensity']} to [0, 1]"


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v):.{digits}f}"
