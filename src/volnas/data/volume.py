"""The one in-memory form every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """Bad input: the message names the file and what is wrong."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


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
