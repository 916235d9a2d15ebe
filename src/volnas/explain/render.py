"""Outputs of an explanation: a montage PNG, a NIfTI heatmap on the source grid, a JSON.

The montage shows evenly spaced slices of the source scan (lung window [-1350, 150] HU for
CT, 1st-99th percentile otherwise) with the map over it (jet, opacity growing with the
map, transparent below 0.15), lesion outlines in cyan when a mask is given, and the prediction in the title. The
NIfTI file holds the map as float32 with the source volume's affine, so it opens as an
overlay over the scan in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from volnas.core.files import atomic_write_bytes, atomic_write_text
from volnas.data.volume import Volume

LUNG_WINDOW = (-1350.0, 150.0)  # HU: level -600, width 1500


def display_window(volume: Volume) -> tuple[float, float]:
    """Grey-level range for display: the lung window for HU scans, else 1st-99th percentile."""
    if volume.is_hu:
        return LUNG_WINDOW
    a = volume.array
    step = max(1, a.size // 2_000_000)
    lo, hi = np.percentile(a.reshape(-1)[::step], [1, 99])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max()) + 1e-6
    return float(lo), float(hi)


def montage_slices(n_slices: int, count: int = 12) -> list[int]:
    """``count`` evenly spaced slice indices (centres of equal bins), distinct and sorted."""
    count = max(1, min(count, n_slices))
    return sorted({int((i + 0.5) * n_slices / count) for i in range(count)})


def slice_shares(heatmap: np.ndarray) -> np.ndarray:
    """Share of the map's total (clipped at 0) on each slice along D."""
    per = np.clip(heatmap, 0, None).reshape(heatmap.shape[0], -1).sum(axis=1, dtype=np.float64)
    total = per.sum()
    return per / total if total > 0 else np.full(len(per), 1.0 / len(per))


def top_slices(heatmap: np.ndarray, k: int = 5, cover: float = 0.5) -> dict[str, Any]:
    """The ``k`` slices with most of the map and the fewest slices holding ``cover`` of it."""
    shares = slice_shares(heatmap)
    order = np.argsort(-shares, kind="stable")
    n_cover = int(np.searchsorted(np.cumsum(shares[order]), cover - 1e-12) + 1)
    return {
        "top": [{"slice": int(i), "share": round(float(shares[i]), 4)} for i in order[:k]],
        f"slices_for_{int(cover * 100)}pct": sorted(int(i) for i in order[:n_cover]),
    }


def render_montage(
    path: Path,
    volume: Volume,
    heatmap: np.ndarray,
    title: str,
    mask: np.ndarray | None = None,
    count: int = 12,
    cols: int = 4,
) -> list[int]:
    """Write the montage PNG of ``count`` evenly spaced slices; returns the slices shown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if heatmap.shape != volume.shape:
        raise ValueError(f"map shape {heatmap.shape} differs from the scan's {volume.shape}")
    idx = montage_slices(volume.shape[0], count)
    cols = min(cols, len(idx))
    rows = -(-len(idx) // cols)
    _, sh, sw = volume.spacing
    aspect = sh / sw if sw > 0 and sh > 0 else 1.0
    lo, hi = display_window(volume)
    shares = slice_shares(heatmap)
    fig = Figure(figsize=(2.7 * cols + 0.8, 2.7 * rows * min(max(aspect, 0.5), 2.0) + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    hm = np.clip(heatmap, 0.0, 1.0)
    for ax, d in zip(axes.flat, idx, strict=False):
        ax.imshow(volume.array[d], cmap="gray", vmin=lo, vmax=hi, aspect=aspect,
                  interpolation="bilinear")
        ax.imshow(hm[d], cmap="jet", vmin=0.0, vmax=1.0, alpha=_overlay_alpha(hm[d]),
                  aspect=aspect, interpolation="bilinear")
        if mask is not None and mask[d].any():
            ax.contour(mask[d].astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.7)
        ax.set_title(f"slice {d + 1}/{volume.shape[0]}  ({shares[d]:.0%})", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.9, bottom=0.01, top=0.9, wspace=0.04, hspace=0.12)
    cax = fig.add_axes((0.92, 0.15, 0.015, 0.65))
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap="jet"), cax=cax, label="map")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(Path(path), buf.getvalue())
    return idx


def _overlay_alpha(hm: np.ndarray) -> np.ndarray:
    """Transparent below 0.15 of the maximum, up to 0.65 opaque at the maximum."""
    return 0.65 * np.clip((hm - 0.15) / 0.85, 0.0, 1.0) ** 0.6


def write_heatmap_nifti(path: Path, heatmap: np.ndarray, volume: Volume) -> None:
    """The map (D, H, W) as float32 NIfTI with the source's affine (``.nii`` or ``.nii.gz``)."""
    import nibabel as nib

    if heatmap.shape != volume.shape:
        raise ValueError(f"map shape {heatmap.shape} differs from the scan's {volume.shape}")
    affine = np.asarray(volume.affine, dtype=np.float64)
    img = nib.Nifti1Image(np.ascontiguousarray(heatmap.transpose(2, 1, 0), dtype=np.float32),
                          affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    data = img.to_bytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=1)
    atomic_write_bytes(Path(path), data)


def write_json(path: Path, obj: Any) -> None:
    """Indented JSON, written atomically."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def render_curves(path: Path, curves: Any, title: str) -> None:
    """Deletion and insertion curves (fraction of voxels changed -> class probability) as PNG.

    ``curves``: :class:`volnas.explain.faithfulness.Curve` objects (``kind``, ``fractions``,
    ``probs``, ``auc``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for c in curves:
        ax.plot(c.fractions, c.probs, marker=".", label=f"{c.kind} (AUC {c.auc:.3f})")
    ax.set_xlabel("fraction of voxels, most salient first")
    ax.set_ylabel("probability of the explained class")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(Path(path), buf.getvalue())
