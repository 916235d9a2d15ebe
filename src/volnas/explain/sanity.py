"""Model-randomisation sanity check: does the map depend on what the network learned?

An explanation of a trained network is compared with the explanation, by the same method,
of a copy whose weights are re-initialised (``full``: every layer; ``cascading``: the
layers from the output back to a given depth). A method that reads the weights gives a
very different map for the randomised copy (low Spearman rank correlation between the two
maps); a method that merely reflects the input (an edge detector, or a map dominated by the
input intensity) gives nearly the same map and fails the check.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn


def randomized_copy(model: nn.Module, mode: str = "full", depth: int | None = None,
                    seed: int = 0) -> nn.Module:
    """A copy of ``model`` (eval mode) with re-initialised weights.

    Args:
        model: the trained network (unchanged).
        mode: ``full`` (every module with ``reset_parameters``) or ``cascading`` (the last
            ``depth`` such modules in definition order, i.e. from the output back).
        depth: for ``cascading``: how many modules from the top are re-initialised.
        seed: torch seed of the new weights.
    """
    if mode not in ("full", "cascading"):
        raise ValueError(f"mode must be full or cascading, not {mode!r}")
    clone = copy.deepcopy(model).eval()
    resettable = [m for m in clone.modules() if hasattr(m, "reset_parameters")]
    if mode == "cascading":
        if depth is None or depth < 1:
            raise ValueError("cascading randomisation needs depth >= 1")
        resettable = resettable[-depth:]
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            for m in resettable:
                m.reset_parameters()  # batch norm: also its running statistics
    finally:
        torch.random.set_rng_state(state)
    return clone


def rank_correlation(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    """Spearman rank correlation of two maps of equal shape (0 when one is constant)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"maps of {a.size} and {b.size} voxels")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


@dataclass
class SanityResult:
    """Rank correlations between trained and randomised maps, per item."""

    correlations: list[float]
    threshold: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.correlations))

    @property
    def passed(self) -> bool:
        """True when the maps change with the weights (mean correlation below threshold)."""
        return self.mean < self.threshold


def sanity_check(
    make: Callable[[nn.Module], Any],
    model: nn.Module,
    x: Tensor,
    class_idx: int | Sequence[int] | Tensor | None = None,
    *,
    mode: str = "full",
    depth: int | None = None,
    threshold: float = 0.5,
    seed: int = 0,
) -> SanityResult:
    """Explain ``x`` with the trained and a randomised ``model``; compare the maps.

    Args:
        make: builds the explainer of a network (e.g. ``lambda m: make_explainer(m, name)``).
        model: the trained network in eval mode.
        x: a batch (B, C, D, H, W).
        class_idx: class(es) explained; None: the trained network's predictions (the
            randomised copy is explained for the same classes).
        mode, depth, seed: as in :func:`randomized_copy`.
        threshold: the check passes when the mean rank correlation is below it.
    """
    trained = make(model)(x, class_idx)
    rand = make(randomized_copy(model, mode, depth, seed))(x, trained.classes)
    corr = [rank_correlation(a.cpu().numpy(), b.cpu().numpy())
            for a, b in zip(trained.maps, rand.maps, strict=True)]
    return SanityResult(corr, threshold)
