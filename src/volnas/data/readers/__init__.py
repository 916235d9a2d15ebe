"""Readers: every supported source becomes one :class:`Volume` (float32 D x H x W).

Formats (``fmt``) and their rules:

* ``dicom`` - a folder holding one series. Files named ``*.dcm`` / ``*.dicom`` / ``*.ima``
  and files without an extension (UID-style names such as ``1.2.840.5`` count as having
  none) are candidates; ``DICOMDIR``, hidden files, other
  extensions and extension-less *text* files (README, ...) are ignored and listed in
  ``meta["ignored"]``. A candidate that does not parse as a DICOM image is a DataError.
  DICOM objects without an image header (no Rows/Columns, e.g. a structured report) are
  ignored and listed too. Slices are ordered by ImagePositionPatient projected on the
  slice normal (row x column direction cosines), else SliceLocation, else InstanceNumber -
  never by file name. Stored values go through RescaleSlope / RescaleIntercept (per slice).
  ``is_hu`` is True for Modality CT, or RescaleType HU, or (Modality absent) when a
  RescaleIntercept is present.
* ``nifti`` - ``.nii`` / ``.nii.gz``. The file's (x, y, z) array becomes D x H x W by
  ``transpose(2, 1, 0)``; the affine is the file's, unchanged. ``is_hu`` is True when the
  minimum value is <= -500 (air in HU is -1000; no other common modality goes that low).
* ``slices`` - a folder of ``.png`` / ``.jpg`` / ``.jpeg`` / ``.tif`` / ``.tiff`` slices,
  ordered by natural sort of the file names (``2 < 10``). Stored values are kept (8- and
  16-bit alike, no rescaling). Colour images become grey: if R == G == B the channel is
  taken as is, otherwise luma ``0.299 R + 0.587 G + 0.114 B``; alpha is dropped. Affine is
  the identity (unit spacing); ``is_hu`` is False.
* ``npz`` - ``file.npz#split/index`` picks one MedMNIST 3D volume (uint8 D x H x W).

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

import functools
import gzip
import os
import re
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volnas.data.volume import DataError, DataWarning, Volume, check_voxel_budget, max_voxels

SLICE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_EXTS = (".dcm", ".dicom", ".ima")
NIFTI_EXTS = (".nii", ".nii.gz")
NPZ_SPLITS = ("train", "val", "test")
HU_MIN_RULE = -500.0  # NIfTI: a minimum at or below this means Hounsfield units

Reader = Callable[[str], Volume]


# --------------------------------------------------------------------------- helpers


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers inside a name numerically (``s2 < s10``)."""
    parts = re.split(r"(\d+)", name)
    # Even positions are text, odd positions digits, so like types are always compared.
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def _check_nonempty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(path, f"cannot stat file: {e}") from e
    if size == 0:
        raise DataError(path, "empty file (0 bytes)")


def _finite_or_raise(array: np.ndarray, files: list[Path] | None, source: str | Path) -> None:
    """NaN/inf anywhere is an error naming the slice file (or the source)."""
    if np.isfinite(array).all():
        return
    bad = ~np.isfinite(array)
    d = int(np.argmax(bad.reshape(bad.shape[0], -1).any(axis=1)))
    n = int(bad.sum())
    where = files[d] if files is not None else source
    raise DataError(where, f"{n} NaN/inf value(s) (first in slice {d})")


def _check_slices(n: int, where: str | Path) -> None:
    if n < 2:
        raise DataError(where, f"a scan needs at least 2 slices, found {n}")


def _odd_one_out(shapes: list[tuple], files: list[Path], what: str) -> None:
    """Raise naming the first file whose shape differs from the most common one."""
    common, _ = Counter(shapes).most_common(1)[0]
    for s, f in zip(shapes, files, strict=True):
        if s != common:
            raise DataError(f, f"mixed {what}: this file is {s}, the others are {common}")


# --------------------------------------------------------------------------- detection


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # a character cut by the 512-byte window
    return True


def _dicom_candidate(path: Path) -> bool:
    """Files of a series folder that must read as DICOM (see module docstring)."""
    name = path.name
    if is_hidden(name) or name.upper() == "DICOMDIR":
        return False
    low = name.lower()
    if low.endswith(DICOM_EXTS):
        return True
    ext = low.rpartition(".")[2] if "." in low else ""
    if re.search("[a-z]", ext):  # a real extension; UID-style names (1.2.840.5) have none
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return True  # let the reader report it
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return not _looks_like_text(head)  # zero-byte or binary: must parse, else an error


def folder_kind(path: Path) -> str | None:
    """``slices``, ``dicom`` or None (no scan files directly inside)."""
    files = [e for e in os.scandir(path) if e.is_file() and not is_hidden(e.name)]
    if any(e.name.lower().endswith(SLICE_EXTS) for e in files):
        return "slices"
    if any(_dicom_candidate(Path(e.path)) for e in files):
        return "dicom"
    return None


def split_npz_path(path: str | Path) -> tuple[Path, str | None, int | None]:
    """``file.npz#train/12`` -> (file, "train", 12); a bare file gives (file, None, None)."""
    s = str(path)
    if "#" not in s:
        return Path(s), None, None
    base, _, frag = s.rpartition("#")
    m = re.fullmatch(r"([A-Za-z]+)/(\d+)", frag)
    if not m:
        raise DataError(base, f"bad npz item {frag!r}; expected '<split>/<index>', e.g. train/12")
    return Path(base), m.group(1), int(m.group(2))


def detect_format(path: str | Path) -> str:
    """Format name of a scan path (see module docstring); DataError when unknown."""
    s = str(path)
    if ".npz#" in s or s.lower().endswith(".npz"):
        return "npz"
    p = Path(s)
    if p.is_file():
        if s.lower().endswith(NIFTI_EXTS):
            return "nifti"
        if s.lower().endswith(DICOM_EXTS):
            raise DataError(p, "a single DICOM file; pass the folder holding the whole series")
        raise DataError(p, "unknown scan format (expected .nii/.nii.gz, .npz#split/i, a folder)")
    if p.is_dir():
        kind = folder_kind(p)
        if kind is None:
            if not any(not is_hidden(e.name) for e in os.scandir(p)):
                raise DataError(p, "empty folder")
            raise DataError(p, "folder holds no slice images or DICOM files")
        return kind
    raise DataError(p, "no such file or folder")


# --------------------------------------------------------------------------- slices


def _slice_files(folder: Path) -> tuple[list[Path], list[str]]:
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    files, ignored = [], []
    for e in os.scandir(folder):
        if not e.is_file() or is_hidden(e.name):
            continue
        (files if e.name.lower().endswith(SLICE_EXTS) else ignored).append(e.name)
    if not files:
        raise DataError(folder, "empty folder (no .png/.jpg/.tif slices)")
    files.sort(key=lambda n: (natural_key(n), n))
    for a, b in zip(files, files[1:], strict=False):
        if natural_key(a) == natural_key(b):
            raise DataError(folder / b, f"ambiguous slice order: same number as {a}")
    return [folder / n for n in files], sorted(ignored)


def _to_grey(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[2] in (2, 3, 4):
        if a.shape[2] == 2:  # grey + alpha
            return a[..., 0]
        rgb = a[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0]
        rgb = rgb.astype(np.float32)
        return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    raise ValueError(f"unsupported image array shape {a.shape}")


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) as the file's header claims it, without decoding pixels."""
    _check_nonempty(path)
    try:
        if path.name.lower().endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                page = tf.pages[0]
                shape, axes = page.shape, page.axes
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return int(h), int(w)
    except Exception as e:
        raise DataError(path, f"unreadable image ({type(e).__name__}: {e})") from e


def _read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """One slice as a 2D array of its stored values (any dtype).

    ``max_pixels``: refuse (from the header, before decoding) a slice claiming more pixels.
    """
    _check_nonempty(path)
    if max_pixels is not None:
        h, w = _image_size(path)
        if h * w > max_pixels:
            raise DataError(
                path,
                f"claimed slice size {h} x {w} is beyond the voxel budget ({max_pixels:,} "
                "pixels per slice for this folder; set $VOLNAS_MAX_VOXELS to raise it)",
            )
    try:
        if path.name.lower().endswith((".tif", ".tiff")):
            import tifffile

            a = np.asarray(tifffile.imread(path))
            if a.ndim == 3 and a.shape[0] in (2, 3, 4) and a.shape[-1] not in (2, 3, 4):
                a = np.moveaxis(a, 0, -1)  # planar colour
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode == "CMYK":
                    im = im.convert("RGB")
                im.load()
                a = np.asarray(im)
        return _to_grey(a)
    except DataError:
        raise
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, zlib.error...
        raise DataError(path, f"unreadable image, cannot decode it ({type(e).__name__}: {e})") from e


def _image_header(path: Path) -> tuple[int, int]:
    """(H, W) from the header, after verifying the file decodes structurally."""
    _check_nonempty(path)
    try:
        if path.name.lower().endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                page = tf.pages[0]
                shape, axes = page.shape, page.axes
                if page.dtype is not None and page.dtype.kind == "f":
                    # Float slices can hold NaN/inf: worth decoding at index time.
                    bad = int((~np.isfinite(page.asarray())).sum())
                    if bad:
                        raise DataError(path, f"{bad} NaN/inf value(s)")
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
            return int(h), int(w)
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            im.verify()
        return int(h), int(w)
    except DataError:
        raise
    except Exception as e:
        raise DataError(path, f"unreadable image ({type(e).__name__}: {e})") from e


def _slice_budget(folder: Path, files: list[Path]) -> int:
    """Pixels allowed per slice; refuses the folder when its first header is over budget."""
    h, w = _image_size(files[0])
    check_voxel_budget(
        files[0], (len(files), h, w), f"shape ({len(files)} slices in {folder.name}/ x H x W)"
    )
    return max_voxels() // len(files)


def read_slices(path: str | Path) -> Volume:
    """A folder of 2D slices (PNG / JPEG / TIFF) as one volume."""
    folder = Path(path)
    files, ignored = _slice_files(folder)
    _check_slices(len(files), files[0] if len(files) == 1 else folder)
    per_slice = _slice_budget(folder, files)
    first = _read_image(files[0], per_slice)
    out = np.empty((len(files), *first.shape), dtype=np.float32)
    dtypes = {str(first.dtype)}
    out[0] = first
    for i, f in enumerate(files[1:], start=1):
        a = _read_image(f, per_slice)
        if a.shape != first.shape:
            _odd_one_out([_image_header(g) for g in files], files, "slice sizes")
            raise DataError(
                f, f"mixed slice sizes: this file is {a.shape}, {files[0].name} is {first.shape}"
            )
        dtypes.add(str(a.dtype))
        out[i] = a
    _finite_or_raise(out, files, folder)
    return Volume(
        array=out,
        affine=np.eye(4),
        is_hu=False,
        source=str(folder),
        meta={
            "format": "slices",
            "files": [f.name for f in files],
            "dtype": sorted(dtypes),
            "spacing": (1.0, 1.0, 1.0),
            "ignored": ignored,
        },
    )


def check_slices(path: str | Path) -> int:
    """Verify a slice folder: sizes from the headers, then every slice decoded (one at a
    time) and checked for its size and NaN/inf; returns the slice count."""
    folder = Path(path)
    files, _ = _slice_files(folder)
    _check_slices(len(files), files[0] if len(files) == 1 else folder)
    per_slice = _slice_budget(folder, files)
    shapes = [_image_size(f) for f in files]
    _odd_one_out(shapes, files, "slice sizes")
    for f, shape in zip(files, shapes, strict=True):
        a = _read_image(f, per_slice)
        if a.shape != shape:
            raise DataError(f, f"decoded slice is {a.shape}, its header says {shape}")
        if a.dtype.kind == "f":
            _finite_or_raise(a[None], [f], folder)
    return len(files)


# --------------------------------------------------------------------------- DICOM

_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"}
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@dataclass
class _Slice:
    path: Path
    ds: object  # pydicom Dataset
    pixel_offset: int | None = None  # where parsing stopped (header-only reads)


def _dcmread(path: Path, header_only: bool) -> _Slice:
    import pydicom
    from pydicom.errors import InvalidDicomError

    _check_nonempty(path)
    try:
        with open(path, "rb") as f:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=header_only)
            except InvalidDicomError:
                # No 128-byte preamble (old files): accept only if it parses into an image.
                f.seek(0)
                ds = pydicom.dcmread(f, stop_before_pixels=header_only, force=True)
                if "Rows" not in ds or "Columns" not in ds:
                    raise DataError(
                        path, "not a DICOM file (no DICM preamble, no image header)"
                    ) from None
            return _Slice(path, ds, f.tell() if header_only else None)
    except DataError:
        raise
    except Exception as e:
        raise DataError(path, f"unreadable DICOM file ({type(e).__name__}: {e})") from e


def _check_pixel_bytes(s: _Slice) -> None:
    """Without decoding: the pixel data element is there and complete (catches truncation)."""
    import struct

    ds, off = s.ds, s.pixel_offset
    if off is None:
        return
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    little = True if ts is None or not ts.is_transfer_syntax else ts.is_little_endian
    implicit = False if ts is None or not ts.is_transfer_syntax else ts.is_implicit_VR
    e = "<" if little else ">"
    with open(s.path, "rb") as f:
        f.seek(off)
        head = f.read(12)
        if len(head) < 8 or struct.unpack(e + "HH", head[:4]) not in _PIXEL_TAGS:
            raise DataError(s.path, "image header without pixel data (truncated file?)")
        if implicit:
            length, start = struct.unpack(e + "I", head[4:8])[0], off + 8
        elif head[4:6] in _LONG_VRS:
            length, start = struct.unpack(e + "I", head[8:12])[0], off + 12
        else:
            length, start = struct.unpack(e + "H", head[6:8])[0], off + 8
        if length == 0xFFFFFFFF:  # encapsulated (compressed): needs its sequence delimiter
            if _SEQ_DELIMITER not in f.read():
                raise DataError(s.path, "compressed pixel data is truncated (no end delimiter)")
            return
    size = s.path.stat().st_size
    if start + length > size:
        raise DataError(s.path, f"pixel data truncated: {size - start} of {length} bytes present")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    need = (
        int(ds.Rows) * int(ds.Columns) * frames * int(ds.get("SamplesPerPixel", 1)) * bits + 7
    ) // 8
    if length < need:
        raise DataError(s.path, f"pixel data is {length} bytes, {need} expected")


def _dicom_files(folder: Path) -> tuple[list[Path], list[str]]:
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    files, ignored = [], []
    for e in os.scandir(folder):
        if not e.is_file():
            continue
        p = Path(e.path)
        if _dicom_candidate(p):
            files.append(p)
        elif not is_hidden(e.name):
            ignored.append(e.name)
    if not files:
        raise DataError(folder, "empty folder (no DICOM files)")
    files.sort()  # only for deterministic messages; slice order comes from the headers
    return files, sorted(ignored)


def _floats(ds, keyword: str) -> list[float] | None:
    from pydicom.multival import MultiValue

    v = ds.get(keyword)
    if v is None or v == "":
        return None
    try:
        return [float(x) for x in (v if isinstance(v, MultiValue | list | tuple) else [v])]
    except (TypeError, ValueError):
        return None


def _plan_series(
    folder: Path, slices: list[_Slice], ignored: list[str]
) -> tuple[list[_Slice], np.ndarray, bool, dict]:
    """Validate one series; return its slices in order, affine, is_hu and meta."""
    images = []
    for s in slices:
        if "Rows" not in s.ds or "Columns" not in s.ds:
            ignored.append(s.path.name)  # a DICOM object that is not an image (SR, KO, ...)
            continue
        images.append(s)
    if not images:
        raise DataError(folder, "no DICOM image files in folder")
    _check_slices(len(images), images[0].path if len(images) == 1 else folder)

    uids = [str(s.ds.get("SeriesInstanceUID", "")) for s in images]
    if len(set(uids)) > 1:
        counts = Counter(uids)
        main = counts.most_common(1)[0][0]
        odd = next(s for u, s in zip(uids, images, strict=True) if u != main)
        listing = ", ".join(f"{u or '<none>'} ({n} files)" for u, n in counts.items())
        raise DataError(
            odd.path,
            f"{len(counts)} series mixed in one folder ({listing}); this file is not in {main}",
        )

    for s in images:
        n = int(s.ds.get("NumberOfFrames", 1) or 1)
        if n > 1:
            raise DataError(s.path, f"multi-frame DICOM ({n} frames) is not supported")
        spp = int(s.ds.get("SamplesPerPixel", 1) or 1)
        if spp != 1:
            raise DataError(s.path, f"colour DICOM (SamplesPerPixel={spp}) is not supported")
    shapes = [(int(s.ds.Rows), int(s.ds.Columns)) for s in images]
    _odd_one_out(shapes, [s.path for s in images], "slice sizes (rows, columns)")
    check_voxel_budget(folder, (len(images), *shapes[0]), "shape (files x Rows x Columns)")

    iop = _floats(images[0].ds, "ImageOrientationPatient")
    notes = []
    if iop is None or len(iop) != 6:
        iop = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        notes.append("ImageOrientationPatient missing: axial assumed")
    row_cos, col_cos = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_cos, col_cos)
    for s in images[1:]:
        other = _floats(s.ds, "ImageOrientationPatient")
        if other is not None and len(other) == 6 and not np.allclose(other, iop, atol=1e-3):
            raise DataError(s.path, f"ImageOrientationPatient {other} differs from {iop}")

    ipps = [_floats(s.ds, "ImagePositionPatient") for s in images]
    no_ipp = [s.path.name for s, p in zip(images, ipps, strict=True) if p is None or len(p) != 3]
    if not no_ipp:
        pos = np.array(ipps, dtype=np.float64)
        keys = pos @ normal
        order_by = "ImagePositionPatient"
    else:
        # Never mix: without a position for every file, the whole series falls back.
        pos = None
        locs = [_floats(s.ds, "SliceLocation") for s in images]
        if all(v is not None for v in locs):
            keys = np.array([v[0] for v in locs])
            order_by = "SliceLocation"
        else:
            nums = [s.ds.get("InstanceNumber") for s in images]
            if any(v is None or v == "" for v in nums):
                missing = images[[v is None or v == "" for v in nums].index(True)].path
                raise DataError(missing, "no ImagePositionPatient, SliceLocation or InstanceNumber")
            keys = np.array([float(v) for v in nums])
            order_by = "InstanceNumber"

    idx = np.argsort(keys, kind="stable")
    keys_sorted = keys[idx]
    dup = np.flatnonzero(np.isclose(np.diff(keys_sorted), 0.0, atol=1e-4))
    if dup.size:
        a, b = images[idx[dup[0]]].path, images[idx[dup[0] + 1]].path
        raise DataError(
            b, f"duplicate slice position {keys_sorted[dup[0]]:.4f} ({order_by}), same as {a.name}"
        )
    ordered = [images[i] for i in idx]

    ps = _floats(ordered[0].ds, "PixelSpacing")
    if ps is None or len(ps) != 2:
        ps = [1.0, 1.0]
        notes.append("PixelSpacing missing: 1 mm assumed")
    if pos is not None:
        p = pos[idx]
        step = (p[-1] - p[0]) / (len(p) - 1)  # follows gantry tilt, unlike normal * spacing
        origin = p[0]
        gaps = np.diff(p @ normal)
    else:
        gaps = np.diff(keys_sorted)
        sp = float(np.mean(gaps)) if order_by == "SliceLocation" else None
        if sp is None:
            v = _floats(ordered[0].ds, "SpacingBetweenSlices") or _floats(
                ordered[0].ds, "SliceThickness"
            )
            sp = v[0] if v else 1.0
            gaps = np.full(len(ordered) - 1, sp)
        step = normal * sp
        origin = np.zeros(3)
        if len(no_ipp) == len(images):
            which = f"in all {len(images)} files"
        else:
            shown = ", ".join(no_ipp[:5]) + (f", ... ({len(no_ipp)} files)" if len(no_ipp) > 5 else "")
            which = f"in {len(no_ipp)} of {len(images)} files ({shown})"
        msg = (
            f"ImagePositionPatient missing {which}: the whole series is ordered by "
            f"{order_by} and its origin set to 0"
        )
        notes.append(msg)
        warnings.warn(f"{folder}: {msg}", DataWarning, stacklevel=3)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * ps[1]  # W: along a row, column spacing
    lps[:3, 1] = col_cos * ps[0]  # H: down a column, row spacing
    lps[:3, 2] = step
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS

    ds0 = ordered[0].ds
    modality = str(ds0.get("Modality", "") or "")
    rescaled = "RescaleIntercept" in ds0 or "RescaleSlope" in ds0
    if modality:
        is_hu = modality.upper() == "CT" or str(ds0.get("RescaleType", "")).upper() == "HU"
    else:
        is_hu = "RescaleIntercept" in ds0
    ts = getattr(getattr(ds0, "file_meta", None), "TransferSyntaxUID", None)
    gaps = np.abs(gaps)
    meta = {
        "format": "dicom",
        "spacing": (float(np.linalg.norm(step)), float(ps[0]), float(ps[1])),
        "series_uid": uids[0],
        "patient_id": str(ds0.get("PatientID", "") or ""),
        "modality": modality,
        "transfer_syntax": str(ts) if ts else "",
        "transfer_syntax_name": getattr(ts, "name", "") if ts else "",
        "ordered_by": order_by,
        "rescaled": rescaled,
        "slice_gap_min": float(gaps.min()),
        "slice_gap_max": float(gaps.max()),
        "files": [s.path.name for s in ordered],
        "ignored": sorted(ignored),
        "notes": notes,
    }
    return ordered, affine, is_hu, meta


def _decode_dicom(s: _Slice) -> np.ndarray:
    from pydicom.pixels import pixel_array

    if "PixelData" not in s.ds:
        raise DataError(s.path, "image header without pixel data (truncated file?)")
    try:
        a = pixel_array(s.ds)
    except Exception as e:
        raise DataError(s.path, f"cannot decode pixel data ({type(e).__name__}: {e})") from e
    return a


def read_dicom(path: str | Path) -> Volume:
    """One DICOM series folder as a volume in HU (for CT)."""
    folder = Path(path)
    files, ignored = _dicom_files(folder)
    slices = [_dcmread(f, header_only=False) for f in files]
    ordered, affine, is_hu, meta = _plan_series(folder, slices, ignored)
    h, w = int(ordered[0].ds.Rows), int(ordered[0].ds.Columns)
    out = np.empty((len(ordered), h, w), dtype=np.float32)
    for i, s in enumerate(ordered):
        a = _decode_dicom(s)
        if a.shape != (h, w):
            raise DataError(s.path, f"pixel data is {a.shape}, header says {(h, w)}")
        slope = float(s.ds.get("RescaleSlope", 1) or 1)
        inter = float(s.ds.get("RescaleIntercept", 0) or 0)
        if slope == 1.0 and inter == 0.0:
            out[i] = a
        else:
            out[i] = a.astype(np.float64) * slope + inter
    _finite_or_raise(out, [s.path for s in ordered], folder)
    return Volume(array=out, affine=affine, is_hu=is_hu, source=str(folder), meta=meta)


def check_dicom(path: str | Path) -> tuple[int, str]:
    """Verify a series folder: headers, then every slice's pixel data decoded (one at a
    time) and checked against its header; returns (n_slices, PatientID or "")."""
    folder = Path(path)
    files, ignored = _dicom_files(folder)
    slices = [_dcmread(f, header_only=True) for f in files]
    ordered, _, _, meta = _plan_series(folder, slices, ignored)
    for s in ordered:
        _check_pixel_bytes(s)
    h, w = int(ordered[0].ds.Rows), int(ordered[0].ds.Columns)
    for s in ordered:
        full = _dcmread(s.path, header_only=False)
        a = _decode_dicom(full)
        if a.shape != (h, w):
            raise DataError(s.path, f"pixel data is {a.shape}, header says {(h, w)}")
        scale = [float(full.ds.get(k, d) or d) for k, d in (("RescaleSlope", 1), ("RescaleIntercept", 0))]
        if not np.isfinite(scale).all() or (a.dtype.kind == "f" and not np.isfinite(a).all()):
            raise DataError(s.path, "NaN/inf in the pixel data or its rescale slope/intercept")
    return len(ordered), meta["patient_id"]


# --------------------------------------------------------------------------- NIfTI


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


# --------------------------------------------------------------------------- MedMNIST npz


def _npz_check_shapes(path: str) -> None:
    """Every array's shape from its .npy header within the voxel budget, before loading."""
    from numpy.lib import format as npy

    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = npy.read_magic(f)
                    if version == (1, 0):
                        shape, _, _ = npy.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, _ = npy.read_array_header_2_0(f)
                    else:
                        continue  # np.load reports an unknown version
                check_voxel_budget(path, shape, f"shape of {info.filename[:-4]!r}")
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(path, f"unreadable npz file ({type(e).__name__}: {e})") from e


@functools.lru_cache(maxsize=4)
def _npz_cached(resolved: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    """All arrays of one npz, loaded once per (path, mtime, size); read-only."""
    _npz_check_shapes(resolved)
    try:
        with np.load(resolved, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(resolved, f"unreadable npz file ({type(e).__name__}: {e})") from e
    for a in arrays.values():
        a.flags.writeable = False
    return arrays


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    p = path.resolve()
    try:
        st = p.stat()
    except OSError as e:
        raise DataError(path, f"cannot open npz file ({e})") from e
    if st.st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    return _npz_cached(str(p), st.st_mtime_ns, st.st_size)


def load_npz_split(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MedMNIST 3D npz -> {split: (images uint8 N x D x H x W, labels int64 N)}."""
    p, _, _ = split_npz_path(path)
    arrays = _npz_arrays(p)
    out = {}
    for split in NPZ_SPLITS:
        for key in (f"{split}_images", f"{split}_labels"):
            if key not in arrays:
                raise DataError(p, f"missing key {key!r} (has {sorted(arrays)})")
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 4:
            raise DataError(p, f"{split}_images must be N x D x H x W, got shape {images.shape}")
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                p,
                f"{split}_labels shape {arrays[f'{split}_labels'].shape} does not match "
                f"{images.shape[0]} images (multi-label files are not supported)",
            )
        out[split] = (images, labels.astype(np.int64))
    return out


def read_npz(path: str | Path) -> Volume:
    """One MedMNIST volume addressed as ``file.npz#split/index``."""
    p, split, index = split_npz_path(path)
    if split is None or index is None:
        raise DataError(p, "an npz scan needs '#<split>/<index>', e.g. file.npz#train/0")
    splits = load_npz_split(p)
    if split not in splits:
        raise DataError(p, f"unknown split {split!r}; expected one of {NPZ_SPLITS}")
    images, labels = splits[split]
    if not 0 <= index < images.shape[0]:
        raise DataError(p, f"index {index} out of range for {split} (0..{images.shape[0] - 1})")
    array = images[index].astype(np.float32)
    _check_slices(array.shape[0], f"{p}#{split}/{index}")
    _finite_or_raise(array, None, f"{p}#{split}/{index}")
    return Volume(
        array=array,
        affine=np.eye(4),
        is_hu=False,
        source=f"{p}#{split}/{index}",
        meta={
            "format": "npz",
            "split": split,
            "index": index,
            "label": int(labels[index]),
            "dtype": str(images.dtype),
            "spacing": (1.0, 1.0, 1.0),
        },
    )


# --------------------------------------------------------------------------- registry

READERS: dict[str, Reader] = {
    "dicom": read_dicom,
    "nifti": read_nifti,
    "slices": read_slices,
    "npz": read_npz,
}


def read_scan(path: str | Path, fmt: str | None = None) -> Volume:
    """Read one scan; ``fmt`` is a key of :data:`READERS` or None to detect it."""
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise DataError(path, f"unknown format {fmt!r}; known: {sorted(READERS)}")
    return READERS[fmt](str(path))


def count_slices(path: str | Path, fmt: str | None = None) -> int:
    """Number of slices, cheaply (file count or header), without decoding pixels."""
    fmt = fmt or detect_format(path)
    if fmt == "slices":
        return len(_slice_files(Path(path))[0])
    if fmt == "dicom":
        return len(_dicom_files(Path(path))[0])
    if fmt == "nifti":
        p = Path(path)
        return _nifti_shape(p, _nifti_load(p).shape)[2]
    if fmt == "npz":
        p, split, _ = split_npz_path(path)
        splits = load_npz_split(p)
        if split not in splits:
            raise DataError(p, f"an npz scan needs '#<split>/<index>' with split in {NPZ_SPLITS}")
        return int(splits[split][0].shape[1])
    raise DataError(path, f"unknown format {fmt!r}; known: {sorted(READERS)}")


@dataclass
class ScanCheck:
    """What a cheap validation learned about one scan."""

    fmt: str
    n_slices: int
    patient_id: str = ""  # DICOM PatientID when present


def check_scan(path: str | Path, fmt: str | None = None, *, full: bool = False) -> ScanCheck:
    """Verify a scan: what passes here, :func:`read_scan` reads.

    Every slice / DICOM frame is decoded and a .nii.gz decompressed to its end, one slice
    at a time (integer NIfTI data is size-checked, not converted); ``full=True`` reads the
    whole volume with :func:`read_scan` instead. Raises DataError naming the bad file.
    """
    fmt = fmt or detect_format(path)
    if full:
        v = read_scan(path, fmt)
        return ScanCheck(fmt, v.shape[0], str(v.meta.get("patient_id", "")))
    if fmt == "slices":
        return ScanCheck(fmt, check_slices(path))
    if fmt == "dicom":
        n, pid = check_dicom(path)
        return ScanCheck(fmt, n, pid)
    if fmt == "nifti":
        return ScanCheck(fmt, check_nifti(path))
    return ScanCheck(fmt, count_slices(path, fmt))
