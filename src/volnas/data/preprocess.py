"""Preprocessing: intensity normalisation, in-plane resize/crop, slice sampling.

The work is split in two so that the expensive part can be cached:

1. ``prepare_stack`` (deterministic, cached on disk): intensity window or min-max to
   [0, 1], in-plane resize and centre-crop of every slice -> float32 (N, H, W).
2. ``sample_slices`` (per epoch): choose T of the N slices, random for training,
   symmetrical for evaluation (docs/design.md, section 2).

Training and evaluation share both steps, so normalisation is identical in both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator

from volnas.data.volume import DataError, Volume

Sampling = Literal["random", "symmetrical"]
CACHE_FORMAT_VERSION = 1


class PreprocessConfig(BaseModel):
    """Settings that turn a raw scan into the model's input. Saved with every run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slices: int = 32
    size: tuple[int, int] = (128, 128)
    resize: tuple[int, int] | None = None  # resize to this, then centre-crop to `size`
    intensity: Literal["auto", "window", "minmax", "range"] = "auto"
    window: tuple[float, float] = (-1000.0, 400.0)  # HU window (window) or value range (range)

    @field_validator("slices")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("slices must be >= 1")
        return v

    @field_validator("window")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"window {v} must be (low, high) with low < high")
        return v

    def stack_key(self) -> str:
        """Hash of the settings that shape the cached stack (not the slice count)."""
        payload = {
            "v": CACHE_FORMAT_VERSION,
            "size": self.size,
            "resize": self.resize,
            "intensity": self.intensity,
            "window": self.window,
        }
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Model input per scan: (C, D, H, W)."""
        return (1, self.slices, self.size[0], self.size[1])


@dataclass(frozen=True)
class StackGeometry:
    """How a prepared stack relates to the source volume (used to map heatmaps back)."""

    source_shape: tuple[int, int, int]  # D, H, W of the raw volume
    resized_hw: tuple[int, int]  # in-plane size after resize, before the crop
    crop_offset: tuple[int, int]  # top-left corner of the crop in the resized plane


# ---------------------------------------------------------------------------------------
# slice sampling


def _middle_out(n: int, count: int, stride: int) -> list[int]:
    """`count` indices in [0, n) at `stride` from the middle slice outwards, alternating sides."""
    mid = n // 2
    out = [mid]
    k = 1
    while len(out) < count:
        added = False
        for pos in (mid - k * stride, mid + k * stride):
            if 0 <= pos < n and len(out) < count:
                out.append(pos)
                added = True
        if not added and (mid - k * stride < 0 and mid + k * stride >= n):
            raise AssertionError(f"cannot take {count} of {n} slices at stride {stride}")
        k += 1
    return out


def sample_slices(
    n: int, t: int, mode: Sampling, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Indices of T slices out of N, in original order (docs/design.md, section 2).

    random (training): N > T keeps a uniformly random ordered subset; N < T adds randomly
    chosen repeats (with replacement). symmetrical (evaluation, deterministic): N > T takes
    slices at stride N // T from the middle outwards; N < T repeats every slice T // N
    times and fills the remainder from the middle outwards.
    """
    if n < 1 or t < 1:
        raise ValueError(f"need n >= 1 and t >= 1, got n={n}, t={t}")
    if n == t:
        return np.arange(n)
    if mode == "random":
        if rng is None:
            raise ValueError("random slice sampling needs an rng")
        if n > t:
            return np.sort(rng.choice(n, size=t, replace=False))
        extra = rng.choice(n, size=t - n, replace=True)
        return np.sort(np.concatenate([np.arange(n), extra]))
    if mode == "symmetrical":
        if n > t:
            return np.sort(np.array(_middle_out(n, t, n // t)))
        reps = t // n
        base = np.repeat(np.arange(n), reps)
        rest = t - n * reps
        fill = np.array(_middle_out(n, rest, 1), dtype=int) if rest else np.zeros(0, dtype=int)
        return np.sort(np.concatenate([base, fill]))
    raise ValueError(f"unknown sampling mode {mode!r}")


# ---------------------------------------------------------------------------------------
# intensity and in-plane geometry


def normalize_intensity(array: np.ndarray, cfg: PreprocessConfig, is_hu: bool) -> np.ndarray:
    """Map raw values to [0, 1]: HU window for CT, min-max otherwise (or as configured)."""
    mode = cfg.intensity
    if mode == "auto":
        mode = "window" if is_hu else "minmax"
    a = array.astype(np.float32, copy=False)
    if mode in ("window", "range"):
        lo, hi = cfg.window
        return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _crop_offset(resized: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    return (max(0, (resized[0] - size[0]) // 2), max(0, (resized[1] - size[1]) // 2))


def resize_crop(stack: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, StackGeometry]:
    """Resize every slice (bilinear, antialiased when shrinking) then centre-crop to cfg.size."""
    n, h, w = stack.shape
    target = cfg.resize or cfg.size
    if target[0] < cfg.size[0] or target[1] < cfg.size[1]:
        raise ValueError(f"resize {target} is smaller than the crop size {cfg.size}")
    out = stack
    if (h, w) != tuple(target):
        t = torch.from_numpy(np.ascontiguousarray(stack)).unsqueeze(1)
        shrink = target[0] < h or target[1] < w
        t = F.interpolate(t, size=target, mode="bilinear", align_corners=False, antialias=shrink)
        out = t.squeeze(1).numpy()
    oy, ox = _crop_offset(tuple(target), cfg.size)
    out = out[:, oy : oy + cfg.size[0], ox : ox + cfg.size[1]]
    geom = StackGeometry((n, h, w), (int(target[0]), int(target[1])), (oy, ox))
    return np.ascontiguousarray(out, dtype=np.float32), geom


def prepare_stack(volume: Volume, cfg: PreprocessConfig) -> tuple[np.ndarray, StackGeometry]:
    """The cacheable part: validate, normalise intensity, resize and crop -> (N, H, W) in [0, 1]."""
    a = volume.array
    if a.ndim != 3:
        raise DataError(volume.source, f"expected a 3D volume, got shape {a.shape}")
    if a.shape[0] < 2:
        raise DataError(volume.source, f"a scan needs at least 2 slices, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise DataError(volume.source, "volume contains NaN or infinite values")
    stack = normalize_intensity(a, cfg, volume.is_hu)
    return resize_crop(stack, cfg)


def take_slices(
    stack: np.ndarray, cfg: PreprocessConfig, mode: Sampling, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Model input (1, T, H, W) float32 and the chosen slice indices."""
    idx = sample_slices(stack.shape[0], cfg.slices, mode, rng)
    return stack[idx][None].astype(np.float32, copy=False), idx
