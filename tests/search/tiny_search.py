"""A tiny searchable space and a tiny npz dataset, shared by the search tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (stem channels, cell channels, layers per cell, strides: None = searched, description):
# medpipe's structure (searched strides under the stride budget), narrow, one layer per cell
TINY = (4, (4, 6, 6, 8, 8, 8), (1, 1, 1, 1, 1, 1), None, "test: medpipe's structure, narrow")


def write_tiny_npz(path: Path, n_train: int = 16) -> Path:
    """A MedMNIST-style npz of 8x16x16 volumes whose class 1 has a bright cube."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("val", 6), ("test", 6)):
        y = np.arange(n) % 2
        x = rng.integers(0, 80, (n, 8, 16, 16)).astype(np.uint8)
        x[y == 1, :, 4:12, 4:12] += 100
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y[:, None]
    np.savez(path, **arrays)
    return path
