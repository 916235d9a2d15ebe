"""Synthetic chest CT data sets with lesion masks, written in every supported layout.

The volumes come from the phantom of :mod:`volnas.data.phantom` (its names are importable
from here too). On-disk layouts (``synthesize``), as real datasets lay them out
(docs/design.md, section 1):

* ``png`` / ``tiff``: ``out/<class>/<patient>/<scan>/<n>.png|.tif``, slices ``1, 2, ..., 10``
  (no zero padding; slice 1 is the most inferior), uint16 storing ``HU + 1024`` clipped to
  ``[0, 65535]`` (so ``HU = value - 1024``).
* ``nifti``: ``out/CT-k/study_NNNN.nii.gz`` (MosMedData style) for two classes, ``CT-0`` =
  normal and ``CT-1..CT-4`` = covid by lesion burden (see ``CT_BURDEN``); for three classes
  (MosMedData has no CAP) the folders are the class names ``out/normal|covid|cap``. int16
  HU, ``array.transpose(2, 1, 0)`` with a RAS affine. ``out/patients.csv`` (file,
  patient_id) groups the studies of one patient.
* ``dicom``: ``out/<class>/<patient>/<series>/<random hex>.dcm``, one CT slice per file,
  Explicit VR Little Endian, uint16 stored values (12 bits) with RescaleSlope 1 and
  RescaleIntercept -1024; file names are random, so order slices by ImagePositionPatient.
* ``npz``: ``out/synth.npz`` (MedMNIST-3D style) with ``{train,val,test}_images`` (uint8
  N x D x H x W, HU windowed to [-1000, 400] then scaled to 0..255, every scan exactly
  ``shape``) and ``{split}_labels`` (uint8 N x 1); splits 70/10/20 by patient
  (:func:`volnas.data.splits.split_patients`, stratified by class).

Every positive scan (covid, cap) also gets ``out/masks/<scan_id>.nii.gz`` (uint8, 1 inside
lesions, same array convention and affine as the scan; identity affine for png, tiff and
npz, which carry no geometry) and a row in ``out/masks.csv`` (scan_id, scan_path,
mask_path; paths relative to ``out``).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volnas.data.phantom import (
    CLASS_NAMES,
    DIFFICULTIES,
    Anatomy,
    make_volume,
    random_anatomy,
    render,
    scan_affine,
    scan_origin,
    scan_spacing,
)
from volnas.data.splits import split_patients

__all__ = [
    "CLASS_NAMES", "CT_BURDEN", "DIFFICULTIES", "FORMATS", "HU_OFFSET", "SPLIT_FRACTIONS",
    "WINDOW", "Anatomy", "SynthResult", "SynthScan", "make_volume", "random_anatomy",
    "scan_affine", "scan_spacing", "synthesize",
]

FORMATS = ("png", "tiff", "nifti", "dicom", "npz")
HU_OFFSET = 1024  # png/tiff/dicom store HU + 1024 as uint16 (the phantom's lowest HU is -1024)
WINDOW = (-1000.0, 400.0)  # npz: HU window mapped to 0..255
# Lesion burden (fraction of lung volume) thresholds for CT-1 | CT-2 | CT-3 | CT-4.
CT_BURDEN = (0.01, 0.02, 0.035)
SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))


@dataclass
class SynthScan:
    """One written scan."""

    scan_id: str
    path: Path  # scan folder (png, tiff, dicom) or file (nifti, npz)
    label: int
    class_name: str
    patient_id: str
    n_slices: int
    mask_path: Path | None  # None for normal scans
    lesion_fraction: float  # lesion voxels / lung voxels
    split: str | None = None  # npz only
    index: int | None = None  # npz only: row in ``{split}_images``


@dataclass
class SynthResult:
    """What ``synthesize`` wrote."""

    out: Path
    fmt: str
    class_names: list[str]
    scans: list[SynthScan]

    @property
    def masks_csv(self) -> Path:
        return self.out / "masks.csv"

    def patients(self) -> dict[str, list[SynthScan]]:
        """Scans grouped by patient id."""
        groups: dict[str, list[SynthScan]] = {}
        for s in self.scans:
            groups.setdefault(s.patient_id, []).append(s)
        return groups


# --------------------------------------------------------------------------- writers


def _to_uint16(hu: np.ndarray, hi: int = 65535) -> np.ndarray:
    return np.clip(np.rint(hu + HU_OFFSET), 0, hi).astype(np.uint16)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype: type) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array.transpose(2, 1, 0), dtype=dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _write_slices(folder: Path, hu: np.ndarray, ext: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = _to_uint16(hu)
    if ext == "png":
        from PIL import Image

        for k, sl in enumerate(data, start=1):
            Image.fromarray(sl).save(folder / f"{k}.png")  # mode I;16
    else:
        import tifffile

        for k, sl in enumerate(data, start=1):
            tifffile.imwrite(folder / f"{k}.tif", sl)


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["volnas-synth", *map(str, parts)])


def _write_dicom(
    folder: Path,
    hu: np.ndarray,
    anat: Anatomy,
    rng: np.random.Generator,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_number: int,
) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    d, h, w = hu.shape
    dz, dy, dx = scan_spacing(anat, hu.shape)
    x0, y0, z0 = scan_origin(anat, hu.shape)
    data = _to_uint16(hu, 4095)

    names = [f"{v:012x}.dcm" for v in rng.integers(0, 2**48, size=d)]
    while len(set(names)) < d or names == sorted(names):
        names = [f"{v:012x}.dcm" for v in rng.integers(0, 2**48, size=d)]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = "20200301"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "volnas synthetic"
    ds.PatientName = f"SYNTH^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{dz:.4f}"
    ds.SpacingBetweenSlices = f"{dz:.4f}"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = patient_id
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = h, w
    ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = str(-HU_OFFSET)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    for k in range(d):
        z = z0 + k * dz
        sop = _uid(series_uid, k)
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        ds.PixelData = data[k].tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)


def _ct_folder(fraction: float) -> str:
    return f"CT-{1 + int(np.searchsorted(CT_BURDEN, fraction, side='right'))}"


def _npz_splits(patients: list[str], labels: list[str], seed: int) -> dict[str, str]:
    """Patient id -> split of :data:`SPLIT_FRACTIONS`, by the one patient splitter (one
    ``patients`` / ``labels`` entry per scan); with fewer patients than splits only the
    largest splits get one."""
    names = [name for name, _ in SPLIT_FRACTIONS]
    fractions = [f for _, f in SPLIT_FRACTIONS]
    for i in sorted(range(len(fractions)), key=lambda i: fractions[i])[
        : max(0, len(fractions) - len(set(patients)))
    ]:
        fractions[i] = 0.0
    fractions = [f / sum(fractions) for f in fractions]
    where = split_patients(patients, labels, fractions, seed, names)
    return {p: names[s] for p, s in where.items()}


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def synthesize(
    out: Path | str,
    *,
    scans: int,
    fmt: str,
    classes: int = 2,
    shape: tuple[int, int, int] = (32, 64, 64),
    seed: int = 0,
    scans_per_patient: tuple[int, int] = (1, 3),
    difficulty: str = "realistic",
) -> SynthResult:
    """Write ``scans`` synthetic chest CT scans under ``out`` in layout ``fmt``.

    Args:
        out: output root (created).
        scans: number of scans in total.
        fmt: one of ``png``, ``tiff``, ``nifti``, ``dicom``, ``npz`` (layouts in the module doc).
        classes: 2 (normal, covid) or 3 (normal, covid, cap).
        shape: nominal (D, H, W); each scan's D varies by up to +-25 % (min 8) except for
            ``npz``, whose scans are all exactly ``shape``.
        seed: the same seed gives the same files.
        scans_per_patient: inclusive range of scans per patient (the last one may get fewer).
        difficulty: ``realistic`` (default) or ``easy`` (see ``DIFFICULTIES``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if classes not in CLASS_NAMES:
        raise ValueError(f"classes must be 2 or 3, got {classes}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; expected one of {DIFFICULTIES}")
    if scans < 1:
        raise ValueError("scans must be >= 1")
    lo, hi = scans_per_patient
    if not 1 <= lo <= hi:
        raise ValueError(f"bad scans_per_patient {scans_per_patient}")
    d0, h, w = (int(s) for s in shape)
    if min(d0, h, w) < 8:
        raise ValueError(f"shape {shape} too small (each side >= 8)")
    names = list(CLASS_NAMES[classes])
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)

    main = np.random.default_rng([seed, 0])
    counts: list[int] = []
    while sum(counts) < scans:
        counts.append(min(int(main.integers(lo, hi + 1)), scans - sum(counts)))
    labels = main.permutation(np.arange(len(counts)) % classes)
    pids = [f"P{p + 1:04d}" for p in range(len(counts))]
    split_of = {}
    if fmt == "npz":
        per_scan = [(pid, names[k]) for pid, n, k in zip(pids, counts, labels, strict=True)
                    for _ in range(n)]
        split_of = _npz_splits([p for p, _ in per_scan], [k for _, k in per_scan], seed)

    results: list[SynthScan] = []
    npz_rows: dict[str, list[tuple[np.ndarray, int]]] = {s: [] for s, _ in SPLIT_FRACTIONS}
    mask_rows: list[tuple[str, str, str]] = []
    patient_rows: list[tuple[str, str]] = []
    n_scan = 0
    for p, (pid, n_p, lab) in enumerate(zip(pids, counts, labels.tolist(), strict=True)):
        anat = random_anatomy(np.random.default_rng([seed, 1, p]))
        cname = names[lab]
        study_uid = _uid(seed, pid, "study")
        frame_uid = _uid(seed, pid, "frame")
        for s in range(n_p):
            n_scan += 1
            rng = np.random.default_rng([seed, 2, p, s])
            if fmt == "npz":
                d = d0
            else:
                d = max(8, int(round(d0 * rng.uniform(0.75, 1.25))))
            hu, mask, lung = render(rng, cname, (d, h, w), anat, difficulty)
            frac = float(mask.sum() / max(lung.sum(), 1))
            affine = scan_affine(anat, hu.shape)
            split = index = None
            if fmt in ("png", "tiff"):
                scan_id = f"scan_{n_scan:04d}"
                path = root / cname / pid / scan_id
                _write_slices(path, hu, "png" if fmt == "png" else "tif")
                affine = np.eye(4)
            elif fmt == "nifti":
                scan_id = f"study_{n_scan:04d}"
                folder = cname if classes == 3 else ("CT-0" if lab == 0 else _ct_folder(frac))
                path = root / folder / f"{scan_id}.nii.gz"
                _write_nifti(path, hu.round(), affine, np.int16)
                patient_rows.append((_rel(path, root), pid))
            elif fmt == "dicom":
                series_uid = _uid(seed, pid, s, "series")
                scan_id = hashlib.sha1(series_uid.encode()).hexdigest()[:12]
                path = root / cname / pid / scan_id
                _write_dicom(
                    path,
                    hu,
                    anat,
                    rng,
                    patient_id=pid,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    frame_uid=frame_uid,
                    series_number=s + 1,
                )
            else:
                split = split_of[pid]
                index = len(npz_rows[split])
                scan_id = f"{split}_{index:04d}"
                path = root / "synth.npz"
                lo_w, hi_w = WINDOW
                img = np.rint((np.clip(hu, lo_w, hi_w) - lo_w) / (hi_w - lo_w) * 255)
                npz_rows[split].append((img.astype(np.uint8), lab))
                affine = np.eye(4)
            mask_path = None
            if lab != 0:
                mask_path = root / "masks" / f"{scan_id}.nii.gz"
                _write_nifti(mask_path, mask, affine, np.uint8)
                mask_rows.append((scan_id, _rel(path, root), _rel(mask_path, root)))
            results.append(
                SynthScan(scan_id, path, lab, cname, pid, d, mask_path, frac, split, index)
            )

    if fmt == "npz":
        arrays: dict[str, np.ndarray] = {}
        for split, _ in SPLIT_FRACTIONS:
            rows = npz_rows[split]
            arrays[f"{split}_images"] = (
                np.stack([r[0] for r in rows]) if rows else np.zeros((0, d0, h, w), np.uint8)
            )
            arrays[f"{split}_labels"] = np.array([[r[1]] for r in rows], np.uint8).reshape(-1, 1)
        np.savez_compressed(root / "synth.npz", **arrays)
    if fmt == "nifti":
        with open(root / "patients.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["file", "patient_id"])
            wr.writerows(patient_rows)
    with open(root / "masks.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["scan_id", "scan_path", "mask_path"])
        wr.writerows(mask_rows)
    return SynthResult(root, fmt, names, results)
