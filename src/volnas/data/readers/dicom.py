"""DICOM: a folder holding one series.

Files named ``*.dcm`` / ``*.dicom`` / ``*.ima`` and files without an extension (UID-style
names such as ``1.2.840.5`` count as having none) are candidates; ``DICOMDIR``, hidden
files, other extensions and extension-less *text* files (README, ...) are ignored and
listed in ``meta["ignored"]``. A candidate that does not parse as a DICOM image is a
DataError, and so is a truncated file. A multi-frame (enhanced) image is read frame by
frame, each frame's position, orientation, spacing and rescale from its functional groups.
DICOM objects that are not images (no Rows/Columns and a non-image SOP class, e.g. a
structured report) are left out and listed too, and so are localizer images (ImageType
LOCALIZER) beside a series that has other images, both with a warning. A series with a
missing slice (a step over 1.5x the median) or irregular spacing is a DataError naming the
files either side. Slices are ordered by
ImagePositionPatient projected on the slice normal (row x column direction cosines), else
SliceLocation, else InstanceNumber - never by file name. Stored values go through RescaleSlope / RescaleIntercept (per slice).
``is_hu`` is True for Modality CT, or RescaleType HU, or (Modality absent) when a
RescaleIntercept is present. The shape the headers claim (Rows x Columns x number of
files) must fit the voxel budget before any pixel data is decoded.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volnas.data.readers.base import (
    ScanCheck,
    ScanReader,
    _check_nonempty,
    _check_slices,
    _finite_or_raise,
    _odd_one_out,
    is_hidden,
)
from volnas.data.volume import DataError, DataWarning, Volume, check_voxel_budget

DICOM_EXTS = (".dcm", ".dicom", ".ima")


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


_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"}
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@dataclass
class _Slice:
    path: Path
    ds: object  # pydicom Dataset (for a frame of a multi-frame file: that frame's header)
    pixel_offset: int | None = None  # where parsing stopped (header-only reads)
    frame: int | None = None  # index in a multi-frame file
    parent: _Slice | None = None  # the multi-frame file a frame comes from


def _dcmread(path: Path, header_only: bool) -> _Slice:
    import pydicom
    from pydicom.errors import InvalidDicomError

    _check_nonempty(path)
    try:
        with open(path, "rb") as f, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
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
            # pydicom answers a file cut inside a sequence with a warning and an empty or
            # partial dataset; a partial slice must never pass as a non-image object
            cut = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
            if cut or len(ds) == 0:
                why = cut[0] if cut else "no data elements"
                raise DataError(path, f"truncated DICOM file ({why})")
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


def _is_localizer(ds) -> bool:
    """A scout / localizer image (ImageType value LOCALIZER), not a slice of a volume."""
    kind = ds.get("ImageType")
    values = [kind] if isinstance(kind, str) else list(kind or [])
    return any(str(v).strip().upper() == "LOCALIZER" for v in values)


def _label(s: _Slice) -> str:
    """A slice's file name, with its frame number for a frame of a multi-frame file."""
    return s.path.name if s.frame is None else f"{s.path.name} frame {s.frame + 1}"


def _is_image_storage(ds) -> bool:
    """The object claims to be an image (its SOP class, or an image modality's pixels)."""
    sop = ds.get("SOPClassUID")
    name = str(getattr(sop, "name", "") or "")
    if sop is not None and name:
        return "Image Storage" in name
    return "PixelData" in ds


def _check_spacing(steps: np.ndarray, ordered: list[_Slice], order_by: str) -> None:
    """Refuse a series with missing or irregular slices, naming the files either side.

    A step over 1.5x or under 0.5x the median step (position, slice location or instance
    number) means a slice file is missing or does not belong: its volume would be stacked
    as if evenly spaced and its heatmap placed off the scan by up to a gap.
    """
    if steps.size < 2:
        return
    steps = np.abs(steps)
    med = float(np.median(steps))
    bad = np.flatnonzero((steps > 1.5 * med) | (steps < 0.5 * med))
    if not bad.size:
        return
    i = int(bad[0])
    b = ordered[i + 1]
    pair = f"{_label(ordered[i])} and " + ("this file" if b.frame is None else _label(b))
    unit = " mm" if order_by != "InstanceNumber" else ""
    kind = "InstanceNumber" if order_by == "InstanceNumber" else "slice"
    if steps[i] > 1.5 * med:
        what = f"{round(steps[i] / med) - 1} slice(s) missing between {pair}"
    else:
        what = f"uneven slice spacing between {pair}"
    raise DataError(
        b.path,
        f"{what}: {kind} step {steps[i]:.3g}{unit}, the series' step is {med:.3g}{unit} "
        f"({order_by}; {bad.size} irregular step(s) in the series)",
    )


_FRAME_KEYS = ("Modality", "PatientID", "SeriesInstanceUID", "Rows", "Columns", "SamplesPerPixel",
               "ImageType", "RescaleType", "SOPClassUID")


def _functional_item(groups, shared, keyword: str):
    """The first item of a functional group sequence, per frame first, else shared."""
    for g in (groups, shared):
        if g is not None and keyword in g and len(g[keyword].value):
            return g[keyword].value[0]
    return None


def _expand_frames(s: _Slice) -> list[_Slice]:
    """A multi-frame (enhanced) image as one pseudo-slice per frame, each with the header
    the rest of the reader expects: position, orientation, spacing and rescale of its frame
    from the functional groups (per-frame, else shared, else the top level)."""
    from pydicom.dataset import Dataset

    ds = s.ds
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    if per is None or len(per) != n:
        got = "none" if per is None else f"{len(per)} items"
        raise DataError(
            s.path,
            f"multi-frame DICOM ({n} frames) without a per-frame functional group for each "
            f"frame (PerFrameFunctionalGroupsSequence: {got}), so its slice positions are "
            "unknown; export the series as one file per slice",
        )
    frames = []
    for k, fg in enumerate(per):
        f = Dataset()
        for key in _FRAME_KEYS:
            if key in ds:
                f[key] = ds[key]
        f.file_meta = getattr(ds, "file_meta", None)
        f.InstanceNumber = k + 1
        for seq, keys in (
            ("PlanePositionSequence", ("ImagePositionPatient",)),
            ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
            ("PixelMeasuresSequence", ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices")),
            ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
        ):
            item = _functional_item(fg, shared, seq)
            for key in keys:
                if item is not None and key in item:
                    f[key] = item[key]
                elif key in ds:
                    f[key] = ds[key]
        frames.append(_Slice(s.path, f, frame=k, parent=s))
    return frames


def _plan_series(
    folder: Path, slices: list[_Slice], ignored: list[str]
) -> tuple[list[_Slice], np.ndarray, bool, dict]:
    """Validate one series; return its slices in order, affine, is_hu and meta."""
    images, others = [], []
    for s in slices:
        if "Rows" in s.ds and "Columns" in s.ds:
            images.append(s)
        elif _is_image_storage(s.ds):
            raise DataError(s.path, "image object without Rows/Columns (truncated or damaged header)")
        else:
            others.append(s.path.name)  # a DICOM object that is not an image (SR, KO, ...)
    if not images:
        raise DataError(folder, "no DICOM image files in folder")
    notes: list[str] = []
    if others:
        ignored.extend(others)
        msg = (f"{len(others)} DICOM object(s) without an image left out: "
               + ", ".join(sorted(others)[:5]) + (" ..." if len(others) > 5 else ""))
        notes.append(msg)
        warnings.warn(f"{folder}: {msg}", DataWarning, stacklevel=3)
    scouts = [s for s in images if _is_localizer(s.ds)]
    if scouts and len(scouts) < len(images):  # a scout exported beside its series
        names = sorted(s.path.name for s in scouts)
        ignored.extend(names)
        images = [s for s in images if not _is_localizer(s.ds)]
        msg = (f"{len(names)} localizer image(s) (ImageType LOCALIZER) left out of the series: "
               + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
        notes.append(msg)
        warnings.warn(f"{folder}: {msg}", DataWarning, stacklevel=3)
    uids = [str(s.ds.get("SeriesInstanceUID", "")) for s in images]
    if len(set(uids)) > 1:
        counts = Counter(uids)
        main = counts.most_common(1)[0][0]
        odd = next(s for u, s in zip(uids, images, strict=True) if u != main)
        def described(u: str) -> str:
            ds = next(s.ds for v, s in zip(uids, images, strict=True) if v == u)
            words = [f"#{ds.SeriesNumber}" if ds.get("SeriesNumber") not in (None, "") else "",
                     f"'{ds.SeriesDescription}'" if ds.get("SeriesDescription") else ""]
            extra = " ".join(w for w in words if w)
            return f"{u or '<none>'} ({counts[u]} files{', ' + extra if extra else ''})"

        listing = "; ".join(described(u) for u in counts)
        raise DataError(
            odd.path,
            f"{len(counts)} series mixed in one folder ({listing}); this file is not in {main}. "
            "Put each series in a folder of its own and index the one to classify",
        )

    for s in images:
        spp = int(s.ds.get("SamplesPerPixel", 1) or 1)
        if spp != 1:
            raise DataError(s.path, f"colour DICOM (SamplesPerPixel={spp}) is not supported")
    multi = [s for s in images if int(s.ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        images = [f for s in images
                  for f in (_expand_frames(s) if int(s.ds.get("NumberOfFrames", 1) or 1) > 1 else [s])]
        notes.append(f"{len(multi)} multi-frame file(s), {len(images)} frames in all")
    _check_slices(len(images), images[0].path if len(images) == 1 else folder)
    shapes = [(int(s.ds.Rows), int(s.ds.Columns)) for s in images]
    _odd_one_out(shapes, [s.path for s in images], "slice sizes (rows, columns)")
    check_voxel_budget(folder, (len(images), *shapes[0]), "shape (files x Rows x Columns)")

    iop = _floats(images[0].ds, "ImageOrientationPatient")
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
        a, b = images[idx[dup[0]]], images[idx[dup[0] + 1]]
        what = f" ({_label(b)})" if b.frame is not None else ""
        raise DataError(
            b.path,
            f"duplicate slice position{what} {keys_sorted[dup[0]]:.4f} ({order_by}), same as {_label(a)}",
        )
    ordered = [images[i] for i in idx]
    _check_spacing(np.diff(keys_sorted), ordered, order_by)

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
        "files": [s.path.name if s.frame is None else f"{s.path.name}#{s.frame + 1}" for s in ordered],
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


def _decode_frame(s: _Slice, decoded: dict[Path, np.ndarray], h: int, w: int) -> np.ndarray:
    """One slice's stored values: its file, or its frame of a multi-frame file."""
    if s.frame is None:
        full = s if s.pixel_offset is None else _dcmread(s.path, header_only=False)
        a = _decode_dicom(full)
        if a.shape != (h, w):
            raise DataError(s.path, f"pixel data is {a.shape}, header says {(h, w)}")
        return a
    if s.path not in decoded:
        assert s.parent is not None
        full = s.parent if s.parent.pixel_offset is None else _dcmread(s.path, header_only=False)
        a = _decode_dicom(full)
        n = int(s.parent.ds.NumberOfFrames)
        if a.shape != (n, h, w):
            raise DataError(s.path, f"pixel data is {a.shape}, header says {(n, h, w)}")
        decoded.clear()  # one multi-frame file in memory at a time
        decoded[s.path] = a
    return decoded[s.path][s.frame]


def read_dicom(path: str | Path) -> Volume:
    """One DICOM series folder as a volume in HU (for CT)."""
    folder = Path(path)
    files, ignored = _dicom_files(folder)
    slices = [_dcmread(f, header_only=False) for f in files]
    ordered, affine, is_hu, meta = _plan_series(folder, slices, ignored)
    h, w = int(ordered[0].ds.Rows), int(ordered[0].ds.Columns)
    out = np.empty((len(ordered), h, w), dtype=np.float32)
    decoded: dict[Path, np.ndarray] = {}  # multi-frame files, decoded once
    for i, s in enumerate(ordered):
        a = _decode_frame(s, decoded, h, w)
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
    files_of = {s.path: s.parent or s for s in ordered}  # each file once, frames by their file
    for f in files_of.values():
        _check_pixel_bytes(f)
    h, w = int(ordered[0].ds.Rows), int(ordered[0].ds.Columns)
    decoded: dict[Path, np.ndarray] = {}
    for s in ordered:
        a = _decode_frame(s, decoded, h, w)
        scale = [float(s.ds.get(k, d) or d) for k, d in (("RescaleSlope", 1), ("RescaleIntercept", 0))]
        if not np.isfinite(scale).all() or (a.dtype.kind == "f" and not np.isfinite(a).all()):
            raise DataError(s.path, "NaN/inf in the pixel data or its rescale slope/intercept")
    return len(ordered), meta["patient_id"]


class DicomSeriesReader(ScanReader):
    """A folder holding one DICOM series."""

    name = "dicom"
    label = "DICOM files"
    folder = True

    def detect_file(self, path: Path) -> bool:
        return _dicom_candidate(path)

    def rejects(self, path: Path) -> str | None:
        if path.name.lower().endswith(DICOM_EXTS) and path.is_file():
            return "a single DICOM file; pass the folder holding the whole series"
        return None

    def read(self, path: str | Path) -> Volume:
        return read_dicom(path)

    def count_slices(self, path: str | Path) -> int:
        import pydicom

        n = 0
        for f in _dicom_files(Path(path))[0]:  # a multi-frame file counts its frames
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
                n += int(ds.get("NumberOfFrames", 1) or 1)
            except Exception:
                n += 1  # read_scan / check_scan name what is wrong with it
        return n

    def check_quick(self, path: str | Path) -> ScanCheck:
        n, patient_id = check_dicom(path)
        return ScanCheck(self.name, n, patient_id)
