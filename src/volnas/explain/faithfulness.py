"""Does the map point at lesions? Pointing game and energy inside lesion masks.

Both are computed on the source scan's grid (the map after :mod:`volnas.explain.geometry`)
against a lesion mask of the same shape, and compared with a *uniform* map:

* **pointing game** (Zhang et al. 2016): a hit when the map's maximum lies in the mask.
  Maxima are often tied (a sampled slice's map is copied to its neighbours), so the score
  is the fraction of maximal voxels that lie in the mask - the hit probability when ties are
  broken at random. For a uniform map every voxel is maximal, so its score is the lesion
  fraction of the scan (``mask.mean()``).
* **energy fraction**: ``sum(map * mask) / sum(map)`` for a non-negative map; a uniform map
  scores the lesion fraction as well.

A map can point at a lesion the model does not use. **Deletion / insertion curves** ask the
model instead (on the network input grid): voxels are set to a baseline in order of
decreasing saliency, ``steps`` equal portions at a time, and the predicted probability of the
explained class is recorded after each; deletion starts from the scan and blanks voxels
(baseline 0, background after preprocessing), insertion starts from a blurred scan and
restores them. A faithful map makes the deletion curve fall fast (small area under it) and
the insertion curve rise fast (large area). Ties in the map are broken in a fixed random
order, so a constant map scores like a random one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _check(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    mask = np.asarray(mask) > 0
    if heatmap.shape != mask.shape:
        raise ValueError(f"map shape {heatmap.shape} differs from mask shape {mask.shape}")
    if not mask.any():
        raise ValueError("empty lesion mask")
    return heatmap, mask


def pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the map's maximal voxels inside ``mask`` (1.0 or 0.0 without ties)."""
    heatmap, mask = _check(heatmap, mask)
    top = heatmap == heatmap.max()
    return float(mask[top].mean())


def energy_fraction(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative) map's sum inside ``mask``; uniform share for a zero map."""
    heatmap, mask = _check(heatmap, mask)
    heatmap = np.clip(heatmap, 0.0, None)
    total = heatmap.sum()
    if total <= 0:
        return float(mask.mean())
    return float(heatmap[mask].sum() / total)


def faithfulness(heatmap: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Pointing game, energy fraction and the uniform map's score (= the lesion fraction)."""
    _, m = _check(heatmap, mask)
    uniform = float(m.mean())
    return {
        "pointing_hit": pointing_game(heatmap, m),
        "energy_in_lesion": energy_fraction(heatmap, m),
        "uniform_pointing": uniform,
        "uniform_energy": uniform,
        "lesion_fraction": uniform,
    }


def summarize(scores: Iterable[dict[str, float]]) -> dict[str, float | int]:
    """Mean of each score over scans (the hit rate is the mean pointing hit); deletion and
    insertion AUCs over the scans that have them."""
    rows = list(scores)
    if not rows:
        return {"n_scans": 0}
    out: dict[str, float | int] = {"n_scans": len(rows)}
    for key in ("pointing_hit", "energy_in_lesion", "uniform_pointing", "uniform_energy",
                "deletion_auc", "insertion_auc"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = float(np.mean(values))
    out["hit_rate"] = out.pop("pointing_hit")
    return out


# --------------------------------------------------------------------------- deletion / insertion


@dataclass
class Curve:
    """A deletion or insertion curve: fraction of voxels changed -> class probability."""

    kind: str  # "deletion" or "insertion"
    fractions: np.ndarray  # (steps + 1,) from 0 to 1
    probs: np.ndarray  # (steps + 1,)

    @property
    def auc(self) -> float:
        """Area under the curve (trapezoid rule over fractions 0..1)."""
        f, p = self.fractions, self.probs
        return float(np.sum((f[1:] - f[:-1]) * (p[1:] + p[:-1]) / 2))


def blur(x: Tensor, passes: int = 3, kernel: int = 5) -> Tensor:
    """A strongly smoothed copy of a 5D batch (repeated box filter), insertion's start."""
    pad = kernel // 2
    for _ in range(passes):
        x = F.avg_pool3d(F.pad(x, (pad,) * 6, mode="replicate"), kernel, stride=1)
    return x


def saliency_curve(
    prob_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    saliency: np.ndarray | Tensor,
    target: int,
    kind: str = "deletion",
    steps: int = 20,
    baseline: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 11,
) -> Curve:
    """Deletion or insertion curve of one input.

    Args:
        prob_fn: batch (N, C, D, H, W) -> class probabilities (N, classes).
        x: the input (1, C, D, H, W) or (C, D, H, W).
        saliency: (D, H, W) map on the same grid, larger = more important.
        target: class whose probability is tracked.
        kind: ``deletion`` (x -> baseline) or ``insertion`` (baseline -> x).
        steps: number of equal portions of voxels.
        baseline: what replaces deleted voxels / insertion's start; default zeros for
            deletion, :func:`blur` of ``x`` for insertion.
        seed: order of tied saliency values.
        batch_size: curve points per call of ``prob_fn``.
    """
    if kind not in ("deletion", "insertion"):
        raise ValueError(f"kind must be deletion or insertion, not {kind!r}")
    if x.ndim == 4:
        x = x[None]
    sal = torch.as_tensor(np.asarray(saliency, dtype=np.float64)).reshape(-1).numpy()
    if sal.size != int(np.prod(x.shape[2:])):
        raise ValueError(f"map of {sal.size} voxels for an input of shape {tuple(x.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if baseline is None:
        baseline = torch.zeros_like(x) if kind == "deletion" else blur(x)
    tie = np.random.default_rng(seed).random(sal.size)
    order = torch.from_numpy(np.lexsort((tie, -sal)).copy()).to(x.device)
    n = sal.size
    counts = [round(n * k / steps) for k in range(steps + 1)]
    src, dst = (x, baseline) if kind == "deletion" else (baseline, x)
    src_flat = src.reshape(1, x.shape[1], -1)
    dst_flat = dst.reshape(1, x.shape[1], -1)
    probs: list[float] = []
    with torch.no_grad():
        for start in range(0, len(counts), batch_size):
            chunk = counts[start : start + batch_size]
            xs = src_flat.repeat(len(chunk), 1, 1)
            for k, c in enumerate(chunk):
                idx = order[:c]
                xs[k][:, idx] = dst_flat[0][:, idx]
            p = prob_fn(xs.reshape(len(chunk), *x.shape[1:]))[:, target]
            probs += [float(v) for v in p.float().cpu()]
    return Curve(kind, np.asarray(counts, dtype=np.float64) / n, np.asarray(probs))


def model_probs(model: torch.nn.Module) -> Callable[[Tensor], Tensor]:
    """``prob_fn`` of a single network: softmax of its logits."""

    def fn(x: Tensor) -> Tensor:
        return torch.softmax(model(x).float(), dim=1)

    return fn
