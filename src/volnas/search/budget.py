"""``--time-budget``: a search's wall-clock budget, split between its stages.

Each stage gets a share of the budget; what a stage leaves unused passes to the next.
``RUN_DIR/search/budget.json`` records the split and the seconds each finished stage took
(wall time, set-up included), so a resumed run gives each stage what is left of its
allocation. Time lost to a kill (the unfinished part of the interrupted stage) is not
charged: a resumed stage starts from what finished stages recorded.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from volnas.core.files import atomic_write_text

# Shares of the budget, in stage order. The final retrain keeps RESERVE of the budget for
# calibration and the test pass, which come after its last epoch.
SPLITS: dict[str, dict[str, float]] = {
    "evolution": {"supernet": 0.45, "evolution": 0.15, "retrain": 0.40},
    "random": {"probes": 0.55, "retrain": 0.45},
}
RESERVE = 0.03
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds of ``45m``, ``90s``, ``1.5h`` or a bare number of seconds. Raises ValueError."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text).lower())
        if not m:
            raise ValueError(f"--time-budget {text!r}: expected a duration like 45m, 90s or 1.5h")
        value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not value > 0:
        raise ValueError(f"--time-budget {text!r}: must be more than 0 seconds")
    return value


class Budget:
    """The stages' deadlines of one run (see the module docstring).

    Args:
        path: the run's ``search/budget.json`` (read if it exists, else written).
        total: the budget in seconds.
        strategy: ``evolution`` or ``random`` (:data:`SPLITS`).
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
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{self.path}: unreadable budget ({type(e).__name__}: {e})") from e
        else:
            self.total = float(total)
            self.split = {k: share * self.total for k, share in SPLITS[strategy].items()}
            self.spent = {}
            self._save()
        self._started: dict[str, float] = {}

    def _save(self) -> None:
        if not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({
            "total_seconds": self.total, "reserve_seconds": self.reserve,
            "split_seconds": self.split, "spent_seconds": self.spent}, indent=2) + "\n")

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

    def summary(self) -> dict[str, Any]:
        """The split and the time taken, as result.json reports them."""
        return {"total_seconds": self.total, "split_seconds": dict(self.split),
                "spent_seconds": dict(self.spent),
                "spent_total_seconds": sum(self.spent.values())}


def fit_epochs(epoch_seconds: float, seconds: float, cap: int) -> int:
    """Epochs of ``epoch_seconds`` each that fit ``seconds``: at least 1, at most ``cap``
    (``cap`` when the epoch time is unknown)."""
    if epoch_seconds <= 0:
        return cap
    return int(max(1, min(cap, seconds // epoch_seconds)))
