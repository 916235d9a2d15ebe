"""Map a heatmap on the model input back onto the source scan's voxel grid.

The model input is built from the source volume (D, H, W) in three steps
(:mod:`volnas.data.preprocess`): in-plane resize to ``resized_hw``, centre crop at
``crop_offset``, then T of the D slices are sampled. :func:`to_source_grid` undoes them in
reverse order:

1. **crop**: the map is placed into the resized plane at the crop offset; outside the crop
   (where the model saw nothing) the map is 0.
2. **resize**: bilinear interpolation (``align_corners=False``, the convention of the
   forward resize) from the resized plane to the source H x W.
3. **slice sampling**: every source slice gets the map of the nearest sampled slice
   (ties go to the lower slice); a slice sampled several times (N < T) gets the mean of
   its copies. Slices beyond the first or last sampled slice by more than half the
   sampling gap get 0, like the area outside the crop: the model never saw them (with
   N = 40 and T = 32, say, the 4 outermost slices at each end).

The in-plane steps run on the distinct sampled slices only, before the slice expansion.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from volnas.data.preprocess import StackGeometry


def uncrop(maps: np.ndarray, geom: StackGeometry) -> np.ndarray:
    """(S, h, w) crop -> (S, *resized_hw), zeros outside the crop."""
    s, h, w = maps.shape
    rh, rw = geom.resized_hw
    oy, ox = geom.crop_offset
    if oy + h > rh or ox + w > rw:
        raise ValueError(f"crop {h}x{w} at {geom.crop_offset} does not fit in {rh}x{rw}")
    out = np.zeros((s, rh, rw), dtype=np.float32)
    out[:, oy : oy + h, ox : ox + w] = maps
    return out


def unresize(maps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(S, h, w) -> (S, *hw) by bilinear interpolation (identity when the size matches)."""
    if tuple(maps.shape[1:]) == tuple(hw):
        return maps.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    t = F.interpolate(t, size=tuple(hw), mode="bilinear", align_corners=False)
    return t[:, 0].numpy()


def unsample(maps: np.ndarray, indices: np.ndarray, n: int) -> np.ndarray:
    """(T, h, w) maps at sampled slice ``indices`` -> (n, h, w) on every source slice."""
    indices = np.asarray(indices, dtype=int)
    if maps.shape[0] != len(indices):
        raise ValueError(f"{maps.shape[0]} map slices for {len(indices)} sampled indices")
    if len(indices) == 0 or indices.min() < 0 or indices.max() >= n:
        raise ValueError(f"sampled indices must lie in 0..{n - 1}")
    uniq, inverse = np.unique(indices, return_inverse=True)
    per = np.zeros((len(uniq), *maps.shape[1:]), dtype=np.float64)
    np.add.at(per, inverse, maps)
    per /= np.bincount(inverse, minlength=len(uniq))[:, None, None]
    near = nearest_sampled(uniq, n)
    out = per[near].astype(np.float32)
    gap = int(np.diff(uniq).max()) if len(uniq) > 1 else 1
    out[np.abs(np.arange(n) - uniq[near]) > gap / 2] = 0.0
    return out


def nearest_sampled(sampled: np.ndarray, n: int) -> np.ndarray:
    """For each source slice 0..n-1, the position in sorted ``sampled`` of the nearest one."""
    sampled = np.asarray(sampled)
    pos = np.searchsorted(sampled, np.arange(n))  # first sampled >= slice
    lo = np.clip(pos - 1, 0, len(sampled) - 1)
    hi = np.clip(pos, 0, len(sampled) - 1)
    d_lo = np.abs(np.arange(n) - sampled[lo])
    d_hi = np.abs(sampled[hi] - np.arange(n))
    return np.where(d_lo <= d_hi, lo, hi)


def to_source_grid(map_thw: np.ndarray, indices: np.ndarray, geom: StackGeometry) -> np.ndarray:
    """Model-input map (T, H, W) -> source grid (D, H, W) float32 (module docstring).

    Args:
        map_thw: heatmap on the model input, one plane per sampled slice.
        indices: the source slice index of each of the T planes (``take_slices``).
        geom: the stack geometry from ``prepare_stack``.
    """
    map_thw = np.asarray(map_thw, dtype=np.float32)
    if map_thw.ndim != 3:
        raise ValueError(f"expected a (T, H, W) map, got shape {map_thw.shape}")
    indices = np.asarray(indices, dtype=int)
    n, h, w = geom.source_shape
    # Collapse repeated slices first so the in-plane steps run once per distinct slice.
    uniq, inverse = np.unique(indices, return_inverse=True)
    per = np.zeros((len(uniq), *map_thw.shape[1:]), dtype=np.float64)
    np.add.at(per, inverse, map_thw)
    per /= np.bincount(inverse, minlength=len(uniq))[:, None, None]
    plane = unresize(uncrop(per.astype(np.float32), geom), (h, w))
    return unsample(plane, uniq, n)
