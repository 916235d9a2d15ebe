"""NIfTI: ``.nii`` / ``.nii.gz`` files.

The file's (x, y, z) array becomes D x H x W by ``transpose(2, 1, 0)``; the affine is the
file's, unchanged. ``is_hu`` is True when the minimum value is <= -500 (air in HU is -1000;
no other common modality goes that low). The header's shape must fit the voxel budget
before the data is read.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from volnas.data.readers.base import (
    ScanCheck,
    ScanReader,
    _check_nonempty,
    _check_slices,
    _finite_or_raise,
)
from volnas.data.volume import DataError, Volume, check_voxel_budget

NIFTI_EXTS = (".nii", ".nii.gz")
HU_MIN_RULE = -500.0  # a minimum at or below this means Hounsfield units


def _nifti_load(path: Path):
    import nibabel as nib

    _check_nonempty(path)
    try:
        return nib.load(str(path))
    except Exception as e:
        raise DataError(path, f"unreadable NIfTI file ({type(e).__name__}: {e})") from e


def _nifti_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    s = tuple(int(x) for x in shape)
    while len(s) > 3 and s[-1] == 1:
        s = s[:-1]
    if len(s) == 2:
        s = (*s, 1)
    if len(s) != 3:
        raise DataError(path, f"expected a 3D image (or 4D with one volume), got shape {shape}")
    _check_slices(s[2], path)
    if min(s) < 1:
        raise DataError(path, f"empty image, shape {shape}")
    check_voxel_budget(path, s, "shape (x, y, z from the header)")
    return s  # type: ignore[return-value]


def _nifti_dtype(path: Path, img) -> np.dtype:
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DataError(path, f"unsupported NIfTI data type {dtype} (RGB or complex)")
    return dtype


def read_nifti(path: str | Path) -> Volume:
    """A NIfTI file: (x, y, z) -> D x H x W = z, y, x; affine unchanged."""
    p = Path(path)
    img = _nifti_load(p)
    shape = _nifti_shape(p, img.shape)
    _nifti_dtype(p, img)
    try:
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
    except Exception as e:  # truncated gzip, short file, ...
        raise DataError(p, f"cannot read NIfTI data ({type(e).__name__}: {e})") from e
    data = np.asarray(data, dtype=np.float32).reshape(shape)
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    _finite_or_raise(array, None, p)
    zooms = img.header.get_zooms()[:3]
    return Volume(
        array=array,
        affine=np.asarray(img.affine, dtype=np.float64),
        is_hu=bool(array.min() <= HU_MIN_RULE),
        source=str(p),
        meta={
            "format": "nifti",
            "spacing": (float(zooms[2]), float(zooms[1]), float(zooms[0]))
            if len(zooms) == 3
            else None,
            "dtype": str(img.get_data_dtype()),
            "is_hu_rule": f"min <= {HU_MIN_RULE}",
        },
    )


def _gunzipped_size(path: Path) -> int:
    """Bytes a .gz file decompresses to, reading it to its end (CRC and length checked)."""
    n = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                n += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(path, f"corrupt or truncated gzip data ({type(e).__name__}: {e})") from e
    return n


def check_nifti(path: str | Path) -> int:
    """Verify a NIfTI file; returns the slice count.

    Header, data type and voxel budget; then the data must be all there (a .nii.gz is
    decompressed to its end, in chunks). Float or scaled data (which may hold NaN/inf) is
    read in full and checked.
    """
    p = Path(path)
    img = _nifti_load(p)
    shape = _nifti_shape(p, img.shape)
    dtype = _nifti_dtype(p, img)
    hdr = img.header
    need = int(getattr(img.dataobj, "offset", 0)) + int(np.prod(img.shape)) * dtype.itemsize
    if str(p).lower().endswith(".gz"):
        have = _gunzipped_size(p)
        if have < need:
            raise DataError(
                p, f"truncated NIfTI: decompresses to {have} bytes, its header needs {need}"
            )
    elif p.stat().st_size < need:
        raise DataError(p, f"truncated NIfTI: {p.stat().st_size} bytes, {need} needed")
    slope, inter = hdr.get_slope_inter()
    scaling_bad = any(v is not None and not np.isfinite(v) for v in (slope, inter))
    if hdr.get_data_dtype().kind == "f" or scaling_bad:
        read_nifti(p)
    return shape[2]


class NiftiReader(ScanReader):
    """A ``.nii`` / ``.nii.gz`` file."""

    name = "nifti"
    label = "/".join(NIFTI_EXTS)
    exts = NIFTI_EXTS

    def read(self, path: str | Path) -> Volume:
        return read_nifti(path)

    def count_slices(self, path: str | Path) -> int:
        p = Path(path)
        return _nifti_shape(p, _nifti_load(p).shape)[2]

    def check_quick(self, path: str | Path) -> ScanCheck:
        return ScanCheck(self.name, check_nifti(path))
