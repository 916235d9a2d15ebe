"""``volnas benchmark``: baselines and searches on the same data, seeds, report (CovidNet3D Table 3).

OUT layout::

    runs/<name>/seed<k>/   one cell: a training run folder (baselines) or a search run folder
                           (searches; its ``final/`` is the retrained network)
    report.md              the table (mean +- std over seeds), settings, machine, per-run list
    report.json            the same numbers, plus every run's metrics
    f1_vs_size.png         F1 against model size (log x)

Every cell uses the same data (and so the same patient splits), the same preprocessing and
the same training settings; only the model (or search space) and the seed change. A
finished cell (``metrics.json`` / ``result.json``) is read, never recomputed; an
interrupted one is resumed. A cell that was run with other settings is an error rather than
a silent mix in the table.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from volnas.search.run import UNDECIDED_RATIO, decision_from_log, search_run_seconds
from volnas.search.search import SearchConfig
from volnas.training.checkpoint import atomic_write_text
from volnas.training.config import TrainConfig, merge_settings
from volnas.training.device import resolve_device
from volnas.training.metrics import summarize_seeds
from volnas.training.run import history_seconds

METRICS = ("accuracy", "precision", "sensitivity", "f1", "f1_weighted", "auc")
HEADERS = {"accuracy": "ACC", "precision": "precision", "sensitivity": "sensitivity", "f1": "F1",
           "f1_weighted": "F1 (weighted)", "auc": "AUC"}
# Settings that do not change a cell's result: a cell may be resumed with other values.
RUNTIME_KEYS = ("device", "num_workers", "cache_dir")
# CLI flag of each override, to write the command line into the report.
FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "slices": "--slices",
         "size": "--size", "search_epochs": "--search-epochs", "probe_epochs": "--probe-epochs",
         "retrain_epochs": "--retrain-epochs", "topk": "--topk", "search_size": "--search-size",
         "search_slices": "--search-slices", "device": "--device", "cache_dir": "--cache-dir"}


class BenchmarkError(ValueError):
    """The benchmark cannot run as asked (unknown model, a cell run with other settings)."""


@dataclass(frozen=True)
class Cell:
    """One (model or search space, seed) pair and its run folder."""

    name: str
    kind: str  # "train" | "search"
    seed: int
    dir: Path

    @property
    def done_file(self) -> Path:
        return self.dir / ("metrics.json" if self.kind == "train" else "result.json")

    @property
    def config_file(self) -> Path:
        return self.dir / ("config.yaml" if self.kind == "train" else "search_config.yaml")

    @property
    def metrics_file(self) -> Path:
        return self.dir / ("metrics.json" if self.kind == "train" else "final/metrics.json")

    @property
    def state(self) -> str:
        if self.done_file.is_file():
            return "done"
        return "resume" if self.config_file.is_file() else "new"


# --------------------------------------------------------------------------- settings


def merged_settings(config: Path | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults <- YAML <- overrides (None ignored), with preprocessing keys nested."""
    try:
        data = merge_settings(config, dict(overrides))
    except ValueError as e:
        raise BenchmarkError(str(e)) from e
    for key in ("model", "space", "data"):
        data.pop(key, None)  # set per cell
    return data


def train_config(settings: Mapping[str, Any], data: str, model: str, seed: int) -> TrainConfig:
    base = {k: v for k, v in settings.items() if k in TrainConfig.model_fields}
    return _validate(TrainConfig, base | {"data": data, "model": model, "seed": seed})


def search_config(settings: Mapping[str, Any], data: str, space: str, seed: int) -> SearchConfig:
    """The search's settings; the retrain gets the baselines' epochs unless told otherwise."""
    base = dict(settings)
    base.setdefault("retrain_epochs", settings.get("epochs", TrainConfig.model_fields["epochs"].default))
    return _validate(SearchConfig, base | {"data": data, "space": space, "seed": seed})


def _validate(cls: type, data: dict[str, Any]) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise BenchmarkError(f"invalid benchmark settings:\n{e}") from e


def check_names(models: Sequence[str], searches: Sequence[str]) -> None:
    """Fail before any training on an unknown model or search space."""
    from volnas.models.genotype import Genotype
    from volnas.models.registry import get_spec
    from volnas.models.spaces import get_space

    for m in models:
        try:
            if m.startswith("genotype:"):
                Genotype.load(m[len("genotype:"):])
            else:
                get_spec(m)
        except (KeyError, ValueError) as e:
            raise BenchmarkError(str(e).strip("'\"")) from e
    for s in searches:
        try:
            get_space(s)
        except KeyError as e:
            raise BenchmarkError(str(e).strip("'\"")) from e
    names = [cell_name(n) for n in (*models, *searches)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BenchmarkError(f"each model and search may appear once; repeated: {dupes}")


def cell_name(name: str) -> str:
    """Folder name of a model or space (``genotype:path/x.json`` -> ``genotype-x``)."""
    if name.startswith("genotype:"):
        name = "genotype-" + Path(name[len("genotype:"):]).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.model_dump(mode="json")
    for k in RUNTIME_KEYS:
        d.pop(k, None)
    if str(d.get("model", "")).startswith("genotype:"):
        d.pop("model")  # pinned into the run folder by run_training
    return d


def same_data(saved: str, now: str) -> bool:
    """Whether a cell's recorded data is the data asked for now.

    Benchmark folders move between machines (committed results, a GPU host), where the same
    file has another absolute path: the same file name counts as the same data when the
    recorded path is absent here, or present with the same size.
    """
    if saved == now:
        return True
    a, b = Path(saved), Path(now)
    if a.name != b.name or not b.is_file():
        return False
    return not a.exists() or (a.is_file() and a.stat().st_size == b.stat().st_size)


def check_cell_settings(cell: Cell, cfg: TrainConfig) -> None:
    """A started cell must have been started with the settings asked for now."""
    if not cell.config_file.is_file():
        return
    try:
        saved_data = yaml.safe_load(cell.config_file.read_text()) or {}
        saved = (SearchConfig.from_saved(saved_data) if isinstance(cfg, SearchConfig)
                 else type(cfg).model_validate(saved_data))
    except (OSError, yaml.YAMLError, ValidationError) as e:
        raise BenchmarkError(f"{cell.config_file}: unreadable ({e})") from e
    a, b = _comparable(saved), _comparable(cfg)
    if same_data(a.get("data", ""), b.get("data", "")):
        a["data"] = b["data"]
    diff = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
    if diff:
        raise BenchmarkError(
            f"{cell.dir} was run with other settings ({'; '.join(diff)}); use another --out "
            "or the same settings")


# --------------------------------------------------------------------------- run


def run_benchmark(
    data: str | Path,
    models: Sequence[str],
    searches: Sequence[str] = (),
    seeds: int = 3,
    out: Path = Path("benchmark"),
    *,
    config: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    console: Console | None = None,
    report_only: bool = False,
) -> dict[str, Any]:
    """Train every model and run every search with every seed; write the report.

    Args:
        data: manifest CSV or MedMNIST ``.npz`` (its patient splits are shared by all cells).
        models: registry names (or ``genotype:FILE``) to train.
        searches: search spaces to search, probe and retrain.
        seeds: seeds per model, ``seed, seed + 1, ...`` (``seed`` from the config, else 0).
        out: the benchmark folder; re-running resumes it.
        config: YAML of TrainConfig / SearchConfig settings shared by every cell.
        overrides: settings over the config (``epochs``, ``batch_size``, ``slices``,
            ``size``, ``search_epochs``, ``probe_epochs``, ``retrain_epochs``, ``topk``,
            ``search_size``, ``search_slices``, ``device``, ``cache_dir``...; None ignored).
            ``retrain_epochs`` defaults to ``epochs``, so searched nets train as long as
            the baselines.
        console: where progress goes.
        report_only: run nothing; write the report of the cells finished so far (e.g. while
            other processes are still running cells of the same folder).

    Returns:
        The report (what ``report.json`` holds); ``report["failed"]`` lists cells that raised.
    """
    from volnas.search.run import run_search
    from volnas.training.run import run_training

    console = console or Console()
    if not models and not searches:
        raise BenchmarkError("nothing to benchmark: give --models and/or --search")
    if seeds < 1:
        raise BenchmarkError("--seeds must be >= 1")
    overrides = dict(overrides or {})
    data_path = Path(data)
    if not data_path.exists():
        raise BenchmarkError(f"{data}: no such manifest or .npz")
    data_str = str(data_path.resolve())
    check_names(models, searches)
    settings = merged_settings(config, overrides)
    base_seed = int(settings.pop("seed", 0) or 0)
    _validate(SearchConfig, settings | {"data": data_str})  # unknown keys fail here, up front
    out = Path(out)
    entries = [(m, "train") for m in models] + [(s, "search") for s in searches]
    cells = [Cell(n, kind, base_seed + k, out / "runs" / cell_name(n) / f"seed{base_seed + k}")
             for n, kind in entries for k in range(seeds)]
    configs = {c: (train_config(settings, data_str, c.name, c.seed) if c.kind == "train"
                   else search_config(settings, data_str, c.name, c.seed)) for c in cells}
    for c in cells:
        check_cell_settings(c, configs[c])

    context = {"command": benchmark_command(data, models, searches, seeds, out, config, overrides),
               "machine": machine_info(configs[cells[0]].device), "data": data_summary(data_str)}
    states = {c: c.state for c in cells}
    todo = [c for c in cells if states[c] != "done"]
    console.print(f"[bold]benchmark[/] {len(entries)} models/searches x {seeds} seeds = "
                  f"{len(cells)} cells: {len(cells) - len(todo)} done, "
                  f"{sum(states[c] == 'resume' for c in cells)} to resume, "
                  f"{sum(states[c] == 'new' for c in cells)} new")
    failed: dict[Cell, str] = {}
    if report_only:
        todo = []
    for i, cell in enumerate(todo, start=1):
        with cell_lock(cell) as mine:
            if not mine:
                console.print(f"{i}/{len(todo)}: {escape(cell.name)} seed {cell.seed}: another "
                              "process is running this cell; skipped")
                continue
            state = cell.state  # another process may have finished it meanwhile
            if state == "done":
                continue
            console.rule(f"[bold]{i}/{len(todo)}: {escape(cell.name)} seed {cell.seed} "
                         f"({'resume' if state == 'resume' else cell.kind})")
            try:
                if cell.kind == "train":
                    run_training(configs[cell], cell.dir, resume=state == "resume", console=console)
                else:
                    run_search(configs[cell], cell.dir, resume=state == "resume", console=console)
            except Exception as e:  # noqa: BLE001 - one failed cell must not lose the others
                failed[cell] = f"{type(e).__name__}: {e}"
                console.print(f"[red]cell {escape(str(cell.dir))} failed:[/] {escape(failed[cell])}")
        write_report(out, cells, configs, context, failed)
    report = write_report(out, cells, configs, context, failed)
    console.print(f"report: {escape(str(out / 'report.md'))} ({escape(str(out / 'report.json'))}, "
                  f"{escape(str(out / 'f1_vs_size.png'))})")
    return report


@contextmanager
def cell_lock(cell: Cell) -> Iterator[bool]:
    """An exclusive lock on a cell beside its folder; yields False if another process holds it.

    Several ``volnas benchmark`` processes (one per GPU or core) may so work on one folder:
    each takes the next cell that nobody holds. Without ``fcntl`` (Windows) it always yields True.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    cell.dir.parent.mkdir(parents=True, exist_ok=True)
    with open(cell.dir.parent / f".{cell.dir.name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def benchmark_command(
    data: str | Path, models: Sequence[str], searches: Sequence[str], seeds: int, out: Path,
    config: Path | None, overrides: Mapping[str, Any],
) -> str:
    """The ``volnas benchmark`` command line that reproduces this benchmark."""
    parts = ["volnas", "benchmark", "--data", str(data)]
    if models:
        parts += ["--models", ",".join(models)]
    if searches:
        parts += ["--search", ",".join(searches)]
    parts += ["--seeds", str(seeds), "--out", str(out)]
    if config is not None:
        parts += ["--config", str(config)]
    for key, value in overrides.items():
        if value is None:
            continue
        flag = FLAGS.get(key, "--" + key.replace("_", "-"))
        parts += [flag, "x".join(map(str, value)) if isinstance(value, tuple | list) else str(value)]
    return shlex.join(parts)


# --------------------------------------------------------------------------- report


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
    }
    # Wall times from the histories (they add up the epochs of every resumed process; the
    # JSON of runs made before that counted only the last process).
    if cell.kind == "train":
        rec["seconds"] = _first(history_seconds(cell.dir), metrics.get("train_seconds"))
    else:
        result = json.loads(cell.done_file.read_text())
        logged = search_run_seconds(cell.dir)
        rec.update({"seconds": _first(logged["search_seconds"], result.get("search_seconds")),
                    "total_seconds": _first(logged["total_seconds"], result.get("total_seconds")),
                    "train_seconds": _first(logged["retrain_seconds"], metrics.get("train_seconds")),
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
        keys = (*METRICS, "model_size_mb", "params", "seconds", "total_seconds")
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
        rows.append(row)
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
    head = ["model", "size (MB)", "input", "slices", *[HEADERS[k] for k in METRICS], "wall time"]
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
            *[fmt_mean_std(s[k], total=r["n_done"]) for k in METRICS], wall]) + " |")
    lines += [
        "",
        f"ACC is micro accuracy over the test scans; precision, sensitivity and F1 are for the "
        f"positive class{' ' + repr(d.get('positive_class')) if d.get('positive_class') else ''} "
        "(the other classes together as negative); F1 (weighted) is the support-weighted mean "
        "of the per-class F1 (scikit-learn's average='weighted'; papers on imbalanced "
        "MedMNIST data often report an averaged F1 without saying so); AUC from softmax "
        "probabilities. Size is "
        "parameters x 4 bytes (MB of 2^20 bytes); std uses ddof=1. Wall time: training of one "
        "run (baselines) or the search itself (searches; total includes probes and the retrain), "
        "as the sum of the epochs' wall times in the runs' history.csv files: a run resumed "
        "after a stop counts the epochs of every process; setup, test and an epoch cut off by "
        "a stop are not counted.",
        "",
    ]
    if report.get("plot"):
        lines += [f"![F1 against model size]({report['plot']})", ""]
    lines += ["## Runs", "", "| model | seed | ACC | F1 | AUC | size (MB) | seconds | folder |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        for run in r["runs"]:
            lines.append(
                f"| {r['name']} | {run['seed']} | {_f(run['accuracy'])} | {_f(run['f1'])} | "
                f"{_f(run['auc'])} | {_f(run['model_size_mb'], 2)} | {_f(run['seconds'], 1)} | "
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


def _decided(run: Mapping[str, Any]) -> str:
    d = run.get("decision") or {}
    parts = [f"{name} entropy {v['entropy_ratio']:.1%} of its start" for name, v in d.items()]
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
