"""Readers: every supported source becomes one :class:`Volume` (float32 D x H x W).

One :class:`~volnas.data.readers.base.ScanReader` per format (``fmt``), registered in
:data:`READERS`; the format's rules are in its module:

* ``nifti`` (:mod:`.nifti`) - a ``.nii`` / ``.nii.gz`` file.
* ``npz`` (:mod:`.npz`) - ``file.npz#split/index``, one MedMNIST 3D volume.
* ``slices`` (:mod:`.slices`) - a folder of PNG / JPEG / TIFF slices.
* ``dicom`` (:mod:`.dicom`) - a folder holding one DICOM series.

Detection asks the readers in that order. Adding a format is one ``ScanReader`` subclass
passed to :func:`register_reader`: :func:`detect_format`, :func:`read_scan`,
:func:`count_slices`, :func:`check_scan` and the dataset indexer then know it.

Every failure is a :class:`DataError` naming the offending *file* (not just its folder):
empty folder, zero-byte or undecodable file, mixed slice sizes, a single slice, NaN/inf,
mixed DICOM series, duplicate slice positions.

Voxel budget: before any pixel data is allocated, the shape a header claims (NIfTI dims,
DICOM Rows x Columns x number of files, slice size x number of slices, npz array shapes)
must hold at most :func:`volnas.data.volume.max_voxels` voxels (``$VOLNAS_MAX_VOXELS``,
default 2**30), else a DataError names the file, the claimed shape and the budget.

:func:`check_scan` verifies a scan the way :func:`read_scan` reads it (every slice and
every DICOM frame decoded, a .nii.gz decompressed to its end), one slice at a time, so
what the indexer accepts can be read later.
"""

from __future__ import annotations

from volnas.data.readers.base import (
    READERS,
    ScanCheck,
    ScanReader,
    check_scan,
    count_slices,
    detect_format,
    folder_formats,
    folder_kind,
    is_hidden,
    natural_key,
    read_scan,
    reader_for,
    register_reader,
    scan_file_format,
    scan_stem,
    unregister_reader,
)
from volnas.data.readers.dicom import DICOM_EXTS, DicomSeriesReader, check_dicom, read_dicom
from volnas.data.readers.nifti import (
    HU_MIN_RULE,
    NIFTI_EXTS,
    NiftiReader,
    check_nifti,
    read_nifti,
)
from volnas.data.readers.npz import (
    NPZ_SPLITS,
    NpzItemReader,
    load_npz_split,
    read_npz,
    split_npz_path,
)
from volnas.data.readers.slices import SLICE_EXTS, SliceFolderReader, check_slices, read_slices

for _reader in (NiftiReader(), NpzItemReader(), SliceFolderReader(), DicomSeriesReader()):
    if _reader.name not in READERS:  # a reload keeps the registry
        register_reader(_reader)

__all__ = [
    "DICOM_EXTS",
    "HU_MIN_RULE",
    "NIFTI_EXTS",
    "NPZ_SPLITS",
    "READERS",
    "SLICE_EXTS",
    "DicomSeriesReader",
    "NiftiReader",
    "NpzItemReader",
    "ScanCheck",
    "ScanReader",
    "SliceFolderReader",
    "check_dicom",
    "check_nifti",
    "check_scan",
    "check_slices",
    "count_slices",
    "detect_format",
    "folder_formats",
    "folder_kind",
    "is_hidden",
    "load_npz_split",
    "natural_key",
    "read_dicom",
    "read_nifti",
    "read_npz",
    "read_scan",
    "read_slices",
    "reader_for",
    "register_reader",
    "scan_file_format",
    "scan_stem",
    "split_npz_path",
    "unregister_reader",
]
