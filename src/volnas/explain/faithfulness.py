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
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


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
    """Mean of each score over scans (the hit rate is the mean pointing hit)."""
    rows = list(scores)
    if not rows:
        return {"n_scans": 0}
    out: dict[str, float | int] = {"n_scans": len(rows)}
    for key in ("pointing_hit", "energy_in_lesion", "uniform_pointing", "uniform_energy"):
        out[key] = float(np.mean([r[key] for r in rows]))
    out["hit_rate"] = out.pop("pointing_hit")
    return out
