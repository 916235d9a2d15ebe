"""What every command shares: the consoles, the error exit, shape arguments, and help texts
and choices read from the configuration classes (so the CLI cannot drift from them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args, get_origin

import typer
from pydantic import BaseModel

from volnas.core.markup import make_console, print_error
from volnas.data.synth import DIFFICULTIES, FORMATS
from volnas.search.config import SearchConfig
from volnas.training.config import TrainConfig
from volnas.training.tta import TTA_MODES

console = make_console()
err_console = make_console(stderr=True)


def fail(message: object, code: int = 2) -> NoReturn:
    """Print ``error: MESSAGE`` (literally, never as markup) and exit with ``code``."""
    print_error(err_console, message)
    raise typer.Exit(code)


def parse_shape(text: str, n: int, what: str) -> tuple[int, ...]:
    """'32x64x64' -> (32, 64, 64), checking the number of parts."""
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(
            f"{what} must look like {'x'.join(['N'] * n)}, got {text!r}") from None
    if len(parts) != n or min(parts) < 1:
        raise typer.BadParameter(f"{what} must have {n} positive parts, got {text!r}")
    return parts


def optional_shape(text: str | None, n: int, what: str) -> tuple[int, ...] | None:
    return None if text is None else parse_shape(text, n, what)


def default(field: str, cls: type[BaseModel] = SearchConfig) -> str:
    """A setting's default as help texts show it: ``[200]``, ``[128x128]``."""
    model: Any = cls
    if field in model.model_fields:
        value = model.model_fields[field].get_default(call_default_factory=True)
    else:  # a preprocessing setting
        value = getattr(model.model_fields["preprocess"].get_default(call_default_factory=True),
                        field)
    if isinstance(value, tuple | list):
        value = "x".join(map(str, value))
    return f"[{value}]"


def _choices(field: str, cls: type[BaseModel] = SearchConfig) -> Any:
    """The Literal type of a setting (without None), so typer validates and lists it."""
    ann = cls.model_fields[field].annotation
    literal = next(a for a in (ann, *get_args(ann)) if get_origin(a) is Literal)
    return Literal[get_args(literal)]  # type: ignore[valid-type]


Optimizer = _choices("optimizer", TrainConfig)
WeightOptimizer = _choices("weight_optimizer")
ClassWeight = _choices("class_weight", TrainConfig)
AugmentSearch = _choices("augment_search")
Objective = _choices("objective")
AugPrior = _choices("aug_prior")
Strategy = _choices("strategy")
SelectMetric = _choices("select_metric", TrainConfig)
Format = Literal[FORMATS]  # type: ignore[valid-type]
Difficulty = Literal[DIFFICULTIES]  # type: ignore[valid-type]
Split = Literal["train", "val", "test"]
TTAChoice = _choices("tta", TrainConfig)  # none | flips | auto (chosen on validation)
TTA = Literal[TTA_MODES]  # type: ignore[valid-type]  # a fixed mode, for evaluate and predict


def metrics_table(metrics: dict[str, Any], split: str, title: str = "") -> Any:
    """A rich table of a split's metrics, each with its bootstrap interval when it has one."""
    from rich.table import Table

    ci = metrics.get("ci") or {}
    level = metrics.get("ci_level")
    table = Table(title=f"{title}{metrics.get('split', split)}: {metrics['n_scans']} scans"
                  + (f", {level:.0%} interval over resampled patients" if ci else ""))
    for col in ("metric", "value", "interval"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1", "f1_weighted", "auc"):
        value = metrics.get(key) if key != "f1_weighted" else (metrics.get("weighted") or {}).get("f1")
        lo_hi = ci.get(key)
        table.add_row(key, "n/a" if value is None else f"{value:.4f}",
                      "" if not lo_hi or None in lo_hi else f"[{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]")
    return table


def start_run(run: Callable[..., dict[str, Any]], cls: type[TrainConfig], config: Path | None,
              overrides: dict[str, Any], out: Path, resume: bool) -> dict[str, Any]:
    """``run(cfg, out, resume=, given=, console=)`` with settings from ``--config`` and the
    flags; a resume gets only what the user set (no defaults), so it can refuse a change."""
    from volnas.data.volume import DataError
    from volnas.training.config import load_config, merge_settings
    from volnas.training.rundir import RunDirError

    try:
        cfg = load_config(config, overrides, cls)
        if not cfg.data and not resume:
            raise typer.BadParameter("--data is required (or set `data:` in --config)")
        given = merge_settings(config, overrides) if resume else None
        return run(cfg, out, resume=resume, given=given, console=console)
    except (DataError, RunDirError, ValueError, FileNotFoundError, KeyError) as e:
        fail(e)


def duration_option(text: str | None) -> float | None:
    """Seconds of a ``--time-budget`` value (``45m``, ``90s``, ``1.5h``), None if not given."""
    if text is None:
        return None
    from volnas.core.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
