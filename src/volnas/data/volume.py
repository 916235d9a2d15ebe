"""The one in-memory form every reader returns."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_VOXELS_ENV = "VOLNAS_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 2**30  # 1024^3: a 1000 x 1024 x 1024 CT fits; 4 GiB as float32


class DataError(ValueError):
    """Bad input: the message names the file and what is wrong.

    ``bad_scan`` is True when the error is about one scan (or stray file) that
    ``volnas data index --skip-bad`` could skip, False for a problem of the data set as a
    whole (splits, class map, patients.csv).
    """

    def __init__(self, path: object, problem: str, *, bad_scan: bool = False) -> None:
        self.path = str(path)
        self.problem = problem
        self.bad_scan = bad_scan
        super().__init__(f"{self.path}: {problem}")


class DataWarning(UserWarning):
    """Input that is read, but with an assumption the user should know about."""


def max_voxels() -> int:
    """The voxel budget of one volume: ``$VOLNAS_MAX_VOXELS`` or :data:`DEFAULT_MAX_VOXELS`."""
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(raw)) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${MAX_VOXELS_ENV}={raw!r} is not a positive number of voxels")
    return value


def check_voxel_budget(path: object, shape: Sequence[int], what: str = "shape") -> None:
    """Refuse a volume whose claimed ``shape`` (from a header, before reading) is too large."""
    n = 1
    for s in shape:
        n *= int(s)
    budget = max_voxels()
    if n > budget:
        dims = " x ".join(str(int(s)) for s in shape)
        raise DataError(
            path,
            f"claimed {what} {dims} = {n:,} voxels is beyond the budget of {budget:,} voxels "
            f"(set ${MAX_VOXELS_ENV} to raise it if this volume is real)",
        )


@dataclass
class Volume:
    """One scan as read from disk, before any preprocessing.

    Attributes:
        array: float32 array D x H x W (slices along D, rows along H, columns along W),
            raw intensities (Hounsfield units for CT; stored values otherwise).
        affine: 4x4 voxel-to-world (RAS, mm) matrix for the array transposed to (W, H, D),
            i.e. exactly what a NIfTI file of ``array.transpose(2, 1, 0)`` needs.
        is_hu: True when intensities are Hounsfield units (CT), which selects HU windowing.
        source: the file or folder it came from.
        meta: free-form reader details (transfer syntax, original dtype, ...).
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    is_hu: bool = False
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (D, H, W)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)  # columns: W, H, D
        return float(norms[2]), float(norms[1]), float(norms[0])
