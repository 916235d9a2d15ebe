"""Raw intensity statistics: is a scan like the ones the model was trained on?

A bundle records, for a sample of its training scans, each scan's raw value percentiles
(before windowing or min-max) and the fraction of voxels inside the preprocessing window.
``predict`` computes the same for every scan and warns when they fall far outside the
training range: a scan without Hounsfield units, a constant (air-only) volume, a scan in
another unit or value range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from volnas.data.preprocess import PreprocessConfig
from volnas.data.volume import Volume

PERCENTILES = {"p01": 1.0, "p50": 50.0, "p99": 99.0}
MAX_VOXELS = 1_000_000  # percentiles from an even subsample of larger volumes
MAX_SCANS = 64  # training scans sampled (evenly) for the reference
FRACTION_TOL = 0.25  # allowed distance of the in-window fraction from the training range


def scan_stats(volume: Volume, pre: PreprocessConfig) -> dict[str, Any]:
    """Raw value percentiles and the fraction of voxels inside ``pre.window`` of one scan."""
    flat = np.asarray(volume.array).ravel()
    if flat.size > MAX_VOXELS:
        flat = flat[:: flat.size // MAX_VOXELS]
    flat = flat.astype(np.float64, copy=False)
    values = np.percentile(flat, list(PERCENTILES.values()))
    lo, hi = pre.window
    out: dict[str, Any] = {k: float(v) for k, v in zip(PERCENTILES, values, strict=True)}
    out["inside_window"] = float(np.mean((flat >= lo) & (flat <= hi)))
    out["is_hu"] = bool(volume.is_hu)
    return out


def reference(per_scan: Sequence[dict[str, Any]], pre: PreprocessConfig) -> dict[str, Any]:
    """The training range of every statistic (min, median, max over the sampled scans)."""
    if not per_scan:
        raise ValueError("no training scans to take intensity statistics from")
    ref: dict[str, Any] = {"n_scans": len(per_scan), "window": list(pre.window),
                           "hu_fraction": float(np.mean([s["is_hu"] for s in per_scan]))}
    for key in (*PERCENTILES, "inside_window"):
        v = np.array([s[key] for s in per_scan], dtype=np.float64)
        ref[key] = {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}
    return ref


def check(stats: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """What is far outside the training range (empty when the scan looks like training)."""
    problems: list[str] = []
    if ref["hu_fraction"] == 1.0 and not stats["is_hu"]:
        problems.append("not in Hounsfield units (every training scan was CT in HU)")
    elif ref["hu_fraction"] == 0.0 and stats["is_hu"]:
        problems.append("in Hounsfield units (no training scan was)")
    # Tolerance: half the training spread, at least a tenth of the typical value range.
    typical = max(ref["p99"]["median"] - ref["p01"]["median"],
                  float(ref["window"][1] - ref["window"][0]) if ref["hu_fraction"] else 0.0,
                  1e-6)
    names = {"p01": "1st percentile", "p50": "median", "p99": "99th percentile"}
    for key, name in names.items():
        r = ref[key]
        tol = max(0.5 * (r["max"] - r["min"]), 0.1 * typical)
        if not r["min"] - tol <= stats[key] <= r["max"] + tol:
            problems.append(f"{name} {stats[key]:.4g} (training {r['min']:.4g} to {r['max']:.4g})")
    r = ref["inside_window"]
    if not r["min"] - FRACTION_TOL <= stats["inside_window"] <= r["max"] + FRACTION_TOL:
        lo, hi = ref["window"]
        problems.append(f"{stats['inside_window']:.0%} of voxels inside the window [{lo:g}, {hi:g}] "
                        f"(training {r['min']:.0%} to {r['max']:.0%})")
    return problems


def describe(problems: list[str]) -> str:
    """One line for a scan's ``warning`` column."""
    return "intensities unlike the training scans: " + "; ".join(problems)
