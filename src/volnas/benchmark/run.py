"""``volnas benchmark``: baselines and searches on the same data, seeds, report.

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

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from volnas.benchmark.cells import (
    BenchmarkError,
    Cell,
    cell_lock,
    cell_name,
    check_cell_settings,
    check_names,
    merged_settings,
    search_config,
    train_config,
    validate_settings,
)
from volnas.benchmark.report import data_summary, machine_info, write_report
from volnas.core.markup import make_console
from volnas.search.config import SearchConfig
from volnas.search.run import run_search
from volnas.training.run import run_training


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

    console = console or make_console()
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
    validate_settings(SearchConfig, settings | {"data": data_str})  # unknown keys fail here, up front
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
        flag = "--" + key.replace("_", "-")  # every override is a flag of the same name
        parts += [flag, "x".join(map(str, value)) if isinstance(value, tuple | list) else str(value)]
    return shlex.join(parts)

