"""``--time-budget``: a search's wall-clock budget, split between its stages.

Each stage gets a share of the budget; what a stage leaves unused passes to the next.
``RUN_DIR/search/budget.json`` records the split and the seconds each finished stage took
(wall time, set-up included), so a resumed run gives each stage what is left of its
allocation. Time lost to a kill (the unfinished part of the interrupted stage) is not
charged: a resumed stage starts from what finished stages recorded. Numbers planned from
the budget (the differentiable search's epochs) are recorded there too, so a resumed run
keeps them rather than planning again from what is left.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from volnas.core.distributed import broadcast_object
from volnas.core.files import atomic_write_text
from volnas.training.budget import RESERVE, estimate_epoch_seconds, fit_epochs
from volnas.training.config import TrainConfig
from volnas.training.rundir import history_seconds

# Shares of the budget, in stage order. The final retrain keeps RESERVE of the budget for
# calibration and the test pass, which come after its last epoch.
SPLITS: dict[str, dict[str, float]] = {
    "differentiable": {"search": 0.45, "probes": 0.10, "retrain": 0.45},
    "evolution": {"supernet": 0.45, "evolution": 0.15, "retrain": 0.40},
    "random": {"probes": 0.55, "retrain": 0.45},
}


class Budget:
    """The stages' deadlines of one run (see the module docstring).

    Args:
        path: the run's ``search/budget.json`` (read if it exists, else written).
        total: the budget in seconds.
        strategy: ``differentiable``, ``random`` or ``evolution`` (:data:`SPLITS`).
        write: whether this process writes the file (rank 0).
    """

    def __init__(self, path: Path, total: float, strategy: str, *, write: bool = True) -> None:
        if strategy not in SPLITS:
            raise ValueError(f"--time-budget: not available for the {strategy} strategy "
                             f"(only {', '.join(SPLITS)})")
        self.path = Path(path)
        self.write = write
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.total = float(data["total_seconds"])
                self.split = {k: float(v) for k, v in data["split_seconds"].items()}
                self.spent = {k: float(v) for k, v in data.get("spent_seconds", {}).items()}
                self.plan = {k: int(v) for k, v in data.get("plan", {}).items()}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{self.path}: unreadable budget ({type(e).__name__}: {e})") from e
        else:
            self.total = float(total)
            self.split = {k: share * self.total for k, share in SPLITS[strategy].items()}
            self.spent = {}
            self.plan: dict[str, int] = {}
            self._save()
        self._started: dict[str, float] = {}

    def _save(self) -> None:
        if not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({
            "total_seconds": self.total, "reserve_seconds": self.reserve,
            "split_seconds": self.split, "spent_seconds": self.spent, "plan": self.plan},
            indent=2) + "\n")

    @property
    def reserve(self) -> float:
        return RESERVE * self.total

    def left(self, stage: str) -> float:
        """Seconds ``stage`` may still take: its allocation plus what earlier stages left,
        less what they and it took (the last stage keeps the reserve)."""
        stages = list(self.split)
        upto = stages[: stages.index(stage) + 1]
        allowed = sum(self.split[s] for s in upto)
        if stage == stages[-1]:
            allowed -= self.reserve
        used = sum(self.spent.get(s, 0.0) for s in upto)
        started = self._started.get(stage)
        if started is not None:
            used += time.time() - started
        return allowed - used

    def start(self, stage: str) -> float:
        """Start timing ``stage``; returns its deadline (``time.time()``)."""
        self._started[stage] = time.time()
        return self._started[stage] + self.left(stage)

    def finish(self, stage: str) -> None:
        """Record the stage's wall time (added to earlier processes' time for it)."""
        started = self._started.pop(stage, None)
        if started is None:
            return
        self.spent[stage] = self.spent.get(stage, 0.0) + time.time() - started
        self._save()

    def planned(self, key: str, plan: Callable[[], int]) -> int:
        """The number recorded under ``key``, else ``plan()``, recorded (a resumed run keeps
        what the first process planned)."""
        if key not in self.plan:  # every rank plans; rank 0's number is the one kept
            self.plan[key] = int(broadcast_object(int(plan())))
            self._save()
        return self.plan[key]

    def summary(self) -> dict[str, Any]:
        """The split and the time taken, as result.json reports them."""
        return {"total_seconds": self.total, "split_seconds": dict(self.split),
                "spent_seconds": dict(self.spent), "plan": dict(self.plan),
                "spent_total_seconds": sum(self.spent.values())}


def budgeted_epochs(cfg: TrainConfig, net: nn.Module, splits: tuple[int, int], seconds: float,
                    final_dir: Path) -> int:
    """Retrain epochs of ``net`` that fit ``seconds`` (at most ``cfg.epochs``), so the
    cosine schedule ends with the budget (:func:`estimate_epoch_seconds`; ``splits``: the
    training and validation scans). A retrain already started keeps its epochs."""
    if (final_dir / "config.yaml").exists():
        from volnas.training.config import load_saved_config

        return load_saved_config(final_dir / "config.yaml").epochs
    per_epoch = estimate_epoch_seconds(net, cfg, *splits)
    return fit_epochs(per_epoch, seconds, cfg.epochs)


def probe_epoch_seconds(run_dir: Path, probes: list[dict[str, Any]], probe_epochs: int) -> float:
    """Mean seconds of one probe epoch in ``run_dir/probes`` (0.0 when none has a history):
    what a retrain epoch at the same input costs, to fit the retrain into what is left."""
    per_epoch = [s / probe_epochs for p in probes
                 if (s := history_seconds(Path(run_dir) / "probes" / f"rank{p['rank']:02d}"))]
    return sum(per_epoch) / len(per_epoch) if per_epoch else 0.0
