"""Benchmark cells: one (model or search space, seed) pair each, their settings and locks."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from volnas.search.config import STRATEGIES, SearchConfig
from volnas.training.config import RESUME_SAFE, TrainConfig, merge_settings


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
    return validate_settings(TrainConfig, base | {"data": data, "model": model, "seed": seed})


def parse_search(name: str) -> tuple[str, str | None]:
    """A benchmark search name, ``SPACE`` or ``SPACE:STRATEGY`` (``covidnet3d-s:random``):
    the space and the strategy (None: the settings' strategy, else differentiable)."""
    space, sep, strategy = name.partition(":")
    if not sep:
        return name, None
    if strategy not in STRATEGIES:
        raise BenchmarkError(f"search {name!r}: unknown strategy {strategy!r}; known: "
                             f"{', '.join(STRATEGIES)}")
    return space, strategy


def search_config(settings: Mapping[str, Any], data: str, name: str, seed: int) -> SearchConfig:
    """The settings of the search ``name`` (``SPACE[:STRATEGY]``); the retrain gets the
    baselines' epochs unless told otherwise. A bare ``SPACE`` is the differentiable search,
    as it was when the committed benchmark cells ran (``volnas search``'s own default is
    random since 2026-12-05), so that resuming a benchmark never changes what a cell means."""
    space, strategy = parse_search(name)
    base = dict(settings)
    base.setdefault("retrain_epochs", settings.get("epochs", TrainConfig.model_fields["epochs"].default))
    base["strategy"] = strategy or base.get("strategy") or "differentiable"
    return validate_settings(SearchConfig, base | {"data": data, "space": space, "seed": seed})


def validate_settings(cls: type, data: dict[str, Any]) -> Any:
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
            get_space(parse_search(s)[0])
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
    for k in RESUME_SAFE:  # settings that cannot change a result
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
        saved = type(cfg).from_saved(saved_data)
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

