"""SCAN arguments -> scans: the one resolver of what users pass to predict and explain.

A SCAN is a DICOM series folder, a NIfTI file, a slice folder, ``file.npz#split/i`` (one
MedMNIST item) or ``MANIFEST.csv#scan_id`` (one manifest row: its path, format and label).
With ``expand``, a manifest CSV or a MedMNIST ``.npz`` stands for all of its scans, and a
folder that is not itself a scan for every scan inside it (:func:`scans_under`).
Problems raise a :class:`DataError` naming the file and what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from volnas.data.dataset import open_source
from volnas.data.index import RESERVED_FOLDERS
from volnas.data.readers import NIFTI_EXTS, natural_key, split_npz_path
from volnas.data.readers.base import folder_kind, is_hidden, scan_file_format
from volnas.data.volume import DataError


@dataclass
class Scan:
    """One scan resolved from a SCAN argument."""

    given: str  # the argument as typed
    arg: str  # this scan alone as a SCAN argument
    path: str  # what read_scan reads (may end in #split/i)
    fmt: str | None  # None: read_scan detects it
    label: str | None  # from a manifest or npz, else None
    scan_id: str  # a manifest's scan id, else a name from the file: stem or stem_split_i
    listed: bool  # True when it comes from a manifest or an npz's list of scans


def resolve_scans(arg: str | Path, *, expand: bool = False) -> list[Scan]:
    """The scans one SCAN argument names (module docstring); ``expand`` lets a manifest CSV
    or an ``.npz`` stand for all of its scans."""
    given = str(arg)
    base, sep, frag = given.rpartition("#")
    if sep and base.lower().endswith(".csv"):
        rows = [r for r in open_source(base).rows if r.scan_id == frag]
        if not rows:
            raise DataError(base, f"no scan with scan_id {frag!r} in this manifest")
        r = rows[0]
        return [Scan(given, given, r.path, r.format, r.label, r.scan_id, True)]
    if sep and base.lower().endswith(".npz"):
        p, split, index = split_npz_path(given)
        if not p.is_file():
            raise DataError(p, "no such file")
        return [Scan(given, given, given, "npz", None, f"{_stem(p)}_{split}_{index}", False)]
    p = Path(given)
    if expand and given.lower().endswith((".csv", ".npz")) and p.is_file():
        return [Scan(given, r.path if r.format == "npz" else f"{given}#{r.scan_id}", r.path,
                     r.format, r.label, r.scan_id, True)
                for r in open_source(given).rows]
    if not p.exists():
        raise DataError(p, "no such file or folder")
    if expand and p.is_dir() and folder_kind(p) is None:
        found = scans_under(p)
        if found:
            return [Scan(str(q), str(q), str(q), None, None, q.relative_to(p).as_posix(), False)
                    for q in found]
    return [Scan(given, given, given, None, None, _stem(p), False)]


def scans_under(root: Path, max_depth: int = 8) -> list[Path]:
    """Every scan inside a folder that is not itself a scan: scan files (NIfTI, ...) and scan
    folders (a DICOM series, a slice folder), in natural order of their paths. Folders named
    ``masks`` / ``mask`` (lesion masks beside the scans) are not entered."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        entries = sorted((e for e in os.scandir(folder) if not is_hidden(e.name)),
                         key=lambda e: natural_key(e.name))
        for e in entries:
            q = Path(e.path)
            if e.is_dir():
                if e.name.lower() in RESERVED_FOLDERS:
                    continue
                if folder_kind(q) is not None:
                    found.append(q)
                elif depth < max_depth:
                    walk(q, depth + 1)
            elif e.is_file() and scan_file_format(q) is not None:
                found.append(q)

    walk(root, 0)
    return found


def _stem(p: Path) -> str:
    name = p.resolve().name
    for ext in (*NIFTI_EXTS, ".npz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name
