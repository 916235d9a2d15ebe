"""Dataset indexer: a folder (or a MedMNIST npz) -> manifest rows with patient-level splits.

Layouts recognised under ``source`` (class folders are the direct sub-folders of the root):

* ``root/<class>/<patient>/<scan>/`` - a scan folder of slices (png/jpg/tif) or a DICOM
  series; patient id = the patient folder name (the same patient under two classes is one
  patient, so it never straddles two splits).
* ``root/<class>/<scan>/`` - a scan folder directly under the class; patient id = the DICOM
  PatientID tag when present, else the folder name.
* ``root/<class>/<study>.nii[.gz]`` - patient id = the file name without .nii/.nii.gz.
  When *every* class folder is named ``CT-k`` (MosMedData) the default class map
  ``CT-0 -> normal, CT-1..CT-4 -> covid`` applies (another ``CT-k`` is an unknown class).
  ``root/<class>/<patient>/<study>.nii[.gz]`` is accepted too (patient = folder name).
* ``file.npz`` (MedMNIST 3D) - one row per volume, ``file.npz#split/i``; the official
  splits are kept (the ``split`` argument is ignored); labels are the integer labels as
  strings (``"0"``, ``"1"``, ... - pass ``class_map={"0": "normal", ...}`` to rename);
  patient id = scan id (MedMNIST has no patient ids).

A ``patients.csv`` in the root (columns ``scan`` or ``file``, and ``patient_id``) overrides
patient ids; its first column may hold a scan's path relative to the root (e.g.
``CT-1/study_0001.nii.gz``), its scan id, its file/folder name or NIfTI stem.

A root-level ``masks`` / ``mask`` folder (lesion masks, as MosMedData and ``volnas.data.synth``
ship them) is never a class and is not indexed.

Unknown class folder rule: a class-level folder that yields no scans at all (empty, or only
non-scan files), or whose name is missing from an explicit ``class_map``, is a DataError
(with ``skip_bad=True`` it is skipped and reported). Stray files at class or patient level
that are not scans (``.txt``, ``.md``, ``.csv``, ``.json``, hidden files) are ignored; any
other stray file is a DataError.

Every scan is verified while indexing: decoded slice by slice (a .nii.gz decompressed to
its end), within the voxel budget (``$VOLNAS_MAX_VOXELS``), so a scan the index accepts can
be read by training and prediction.

The rows, the manifest CSV and its sidecars: :mod:`volnas.data.manifest`.

Class order (= model output index) is natural sort of the class names (``"2" < "10"``,
case-insensitive). Positive class: the one rule of :mod:`volnas.data.classes`, which the
metrics use too (``positive_class`` when given; else a class called COVID; else, of two
classes where one is called normal, the other one; else the class at index 1).
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from volnas.data import classes as class_rule  # build_index's argument shadows the name
from volnas.data.manifest import (
    SPLITS,
    IndexResult,
    ManifestRow,
    Skipped,
    class_names,
)
from volnas.data.readers import (
    NPZ_SPLITS,
    check_scan,
    folder_formats,
    folder_kind,
    is_hidden,
    load_npz_split,
    scan_file_format,
    scan_stem,
)
from volnas.data.splits import split_patients
from volnas.data.volume import DataError

if TYPE_CHECKING:
    pass

DEFAULT_SPLIT = (0.7, 0.1, 0.2)
MOSMED_MAP = {"CT-0": "normal", "CT-1": "covid", "CT-2": "covid", "CT-3": "covid", "CT-4": "covid"}
RESERVED_FOLDERS = ("masks", "mask")  # root-level lesion masks, never a class
_IGNORABLE = (".txt", ".md", ".csv", ".json", ".yaml", ".yml", ".log", ".xml", ".pdf", ".html")








# --------------------------------------------------------------------------- classes




# --------------------------------------------------------------------------- splitting


def assign_splits(
    rows: list[ManifestRow], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> None:
    """Set ``row.split`` in place by :func:`volnas.data.splits.split_patients` (by patient,
    stratified by label, deterministic from ``seed``)."""
    where = split_patients([r.patient_id for r in rows], [r.label for r in rows], fractions,
                           seed, SPLITS)
    for r in rows:
        r.split = SPLITS[where[r.patient_id]]


# --------------------------------------------------------------------------- discovery


def _scandir(path: Path) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(path) if not is_hidden(e.name)), key=lambda e: e.name)


@dataclass
class _Candidate:
    class_folder: str
    path: Path
    fmt: str
    patient: str | None  # None: the scan's own patient id (DICOM PatientID), else fallback
    fallback_patient: str
    rel: str  # scan id


def _patients_csv(root: Path) -> dict[str, str]:
    f = root / "patients.csv"
    if not f.is_file():
        return {}
    with open(f, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        key = "scan" if "scan" in cols else "file" if "file" in cols else None
        if key is None or "patient_id" not in cols:
            raise DataError(f, f"needs columns (scan or file) and patient_id, has {cols}")
        out = {}
        for line, rec in enumerate(reader, start=2):
            k, pid = (rec.get(key) or "").strip(), (rec.get("patient_id") or "").strip()
            if not k or not pid:
                raise DataError(f"{f} line {line}", "empty scan/file or patient_id")
            out[k] = pid
    return out


def _discover_class(
    root: Path, cls: Path, bad: list[tuple[str, str]], strict: bool
) -> list[_Candidate]:
    found: list[_Candidate] = []

    def fail(path: Path, reason: str) -> None:
        if strict:
            raise DataError(path, reason, bad_scan=True)
        bad.append((str(path), reason))

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    for e in _scandir(cls):
        p = Path(e.path)
        if e.is_file():
            fmt = scan_file_format(p)
            if fmt is not None:
                stem = scan_stem(e.name)
                found.append(_Candidate(cls.name, p, fmt, None, stem, f"{cls.name}/{stem}"))
            elif not e.name.lower().endswith(_IGNORABLE):
                fail(p, "unexpected file at patient/scan level (expected a folder or .nii[.gz])")
            continue
        if not e.is_dir():
            continue
        kind = folder_kind(p)
        if kind is not None:  # root/<class>/<scan>
            found.append(_Candidate(cls.name, p, kind, None, e.name, rel(p)))
            continue
        subs = _scandir(p)
        dirs = [s for s in subs if s.is_dir()]
        for s in subs:
            if not s.is_file():
                continue
            q = Path(s.path)
            fmt = scan_file_format(q)
            if fmt is not None:  # root/<class>/<patient>/<study>.nii.gz
                stem = scan_stem(s.name)
                found.append(_Candidate(cls.name, q, fmt, e.name, e.name, f"{rel(p)}/{stem}"))
                continue
            if s.name.lower().endswith(_IGNORABLE):
                continue
            fail(Path(s.path), "unexpected file in a patient folder (expected scan folders)")
        if not dirs and not any(c.path.parent == p for c in found):
            fail(p, "empty folder (no scans)" if not subs else "folder holds no scans")
            continue
        for d in dirs:  # root/<class>/<patient>/<scan>
            q = Path(d.path)
            k = folder_kind(q)
            if k is None:
                fail(
                    q,
                    "empty folder"
                    if not _scandir(q)
                    else f"folder holds no {folder_formats()}",
                )
                continue
            found.append(_Candidate(cls.name, q, k, e.name, e.name, rel(q)))
    return found


def _label_map(folders: list[str], class_map: dict[str, str] | None) -> dict[str, str] | None:
    if class_map is not None:
        return dict(class_map)
    if folders and all(re.fullmatch(r"CT-\d+", f, flags=re.IGNORECASE) for f in folders):
        return {f: MOSMED_MAP[f.upper()] for f in folders if f.upper() in MOSMED_MAP}
    return None


def _index_npz(
    source: Path, class_map: dict[str, str] | None, split_arg: Sequence[float] | None
) -> tuple[list[ManifestRow], list[str]]:
    splits = load_npz_split(source)
    notes = [] if split_arg is None else [
        f"{source.name}: MedMNIST official splits kept; split={tuple(split_arg)} ignored"]
    rows = []
    for split in NPZ_SPLITS:
        images, labels = splits[split]
        for i in range(images.shape[0]):
            raw = str(int(labels[i]))
            if class_map is not None and raw not in class_map:
                raise DataError(source, f"label {raw!r} ({split}/{i}) is not in class_map")
            sid = f"{split}/{i}"
            rows.append(
                ManifestRow(
                    scan_id=sid,
                    path=f"{os.path.abspath(source)}#{sid}",
                    format="npz",
                    label=class_map[raw] if class_map else raw,
                    patient_id=sid,
                    n_slices=int(images.shape[1]),
                    split=split,
                )
            )
    return rows, notes


def build_index(
    source: Path | str,
    *,
    split: Sequence[float] | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    class_map: dict[str, str] | None = None,
    positive_class: str | None = None,
    full_check: bool = False,
) -> IndexResult:
    """Index a data set (see module docstring for layouts and rules).

    Every scan is verified while indexing (:func:`volnas.data.readers.check_scan`: decoded
    slice by slice; ``full_check=True`` reads each whole volume instead). A bad scan raises
    its DataError (with ``bad_scan`` set), or with ``skip_bad`` is listed in
    ``IndexResult.skipped``. ``split``: train, val, test fractions of a folder's patients
    [0.7, 0.1, 0.2]; an npz keeps its official splits (a ``split`` given is noted, unused).
    """
    source = Path(source)
    notes: list[str] = []
    skipped: list[Skipped] = []
    if source.is_file() and source.name.lower().endswith(".npz"):
        rows, notes = _index_npz(source, class_map, split)
        layout, fractions = "medmnist-npz", None
    elif source.is_dir():
        rows, skipped, layout, notes = _index_folder(source, class_map, skip_bad, full_check)
        fractions = tuple(float(x) for x in (split or DEFAULT_SPLIT))
        if not rows:
            raise DataError(source, "no readable scans found")
        try:
            assign_splits(rows, fractions, seed)
        except ValueError as e:
            raise DataError(source, str(e)) from e
    else:
        raise DataError(source, "not a folder or a .npz file")
    if not rows:
        raise DataError(source, "no readable scans found")
    ids = Counter(r.scan_id for r in rows)
    dup = [k for k, n in ids.items() if n > 1]
    if dup:
        raise DataError(source, f"duplicate scan ids {dup[:5]} (e.g. a.nii and a.nii.gz)")
    classes = class_names(rows)
    return IndexResult(
        rows=rows,
        classes=classes,
        positive_class=class_rule.positive_class(classes, positive_class),
        source=os.path.abspath(source),
        seed=seed,
        split=fractions,  # type: ignore[arg-type]
        layout=layout,
        skipped=skipped,
        notes=notes,
    )


def _index_folder(
    root: Path, class_map: dict[str, str] | None, skip_bad: bool, full_check: bool
) -> tuple[list[ManifestRow], list[Skipped], str, list[str]]:
    bad: list[tuple[str, str]] = []
    entries = _scandir(root)
    folders = [e for e in entries if e.is_dir() and e.name.lower() not in RESERVED_FOLDERS]
    for e in entries:
        if e.is_file() and not e.name.lower().endswith(_IGNORABLE):
            reason = "unexpected file at class level (expected root/<class>/...)"
            if not skip_bad:
                raise DataError(e.path, reason, bad_scan=True)
            bad.append((e.path, reason))
    if not folders:
        raise DataError(root, "no class folders (expected root/<class>/...)")
    cmap = _label_map([f.name for f in folders], class_map)
    pid_map = _patients_csv(root)

    candidates: list[_Candidate] = []
    for f in folders:
        cls = Path(f.path)
        if cmap is not None and f.name not in cmap:
            reason = f"unknown class folder {f.name!r}: not in the class map {sorted(cmap)}"
            if not skip_bad:
                raise DataError(cls, reason, bad_scan=True)
            bad.append((str(cls), reason))
            continue
        found = _discover_class(root, cls, bad, strict=not skip_bad)
        if not found and not any(b[0].startswith(str(cls) + os.sep) for b in bad):
            reason = f"unknown class folder {f.name!r}: it holds no scans"
            if not skip_bad:
                raise DataError(cls, reason, bad_scan=True)
            bad.append((str(cls), reason))
        candidates.extend(found)

    rows: list[ManifestRow] = []
    used: set[str] = set()
    errors: list[DataError] = []  # without skip_bad: every bad scan, raised together
    for c in candidates:
        try:
            info = check_scan(c.path, c.fmt, full=full_check)
        except DataError as err:
            err.bad_scan = True
            if not skip_bad:
                errors.append(err)
            else:
                bad.append((str(c.path), str(err)))
            continue
        pid = c.patient if c.patient is not None else (info.patient_id or c.fallback_patient)
        keys = (c.path.relative_to(root).as_posix(), c.rel, c.path.name, scan_stem(c.path.name))
        for key in keys:
            if key in pid_map:
                pid = pid_map[key]
                used.add(key)
                break
        rows.append(
            ManifestRow(
                scan_id=c.rel,
                path=os.path.abspath(c.path),
                format=c.fmt,
                label=cmap[c.class_folder] if cmap is not None else c.class_folder,
                patient_id=pid,
                n_slices=info.n_slices,
                split="",
            )
        )
    if errors:
        raise errors[0] if len(errors) == 1 else _bad_scans(root, errors)
    kinds = sorted({c.fmt for c in candidates})
    layout = "+".join(kinds) if kinds else "empty"
    notes = []
    if pid_map:
        unused = len(set(pid_map) - used)
        notes.append(f"patients.csv: {len(used)} scans mapped, {unused} entries matched no scan")
    return rows, [Skipped(p, r) for p, r in bad], layout, notes


def _bad_scans(root: Path, errors: list[DataError], shown: int = 20) -> DataError:
    """One error listing every bad scan (the first ``shown``), so that a folder with several
    damaged files is fixed in one pass, not one file per run."""
    lines = [f"  {e}" for e in errors[:shown]]
    if len(errors) > shown:
        lines.append(f"  ... and {len(errors) - shown} more")
    return DataError(root, f"{len(errors)} bad scans:\n" + "\n".join(lines), bad_scan=True)


# --------------------------------------------------------------------------- manifest I/O


















# --------------------------------------------------------------------------- summary


