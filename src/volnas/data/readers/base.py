"""The reader contract: one :class:`ScanReader` per format, held in a registry.

A format is one class: ``name`` (the manifest's ``format`` column), ``detect`` (cheap:
extension or folder content), ``read``, ``count_slices`` (header only where the format
allows) and ``check`` (index-time verification). The dispatchers :func:`detect_format`,
:func:`read_scan`, :func:`count_slices` and :func:`check_scan` loop over
:data:`READERS`; detection asks the readers in registration order.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from volnas.data.volume import DataError, Volume


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


# --------------------------------------------------------------------------- contract


@dataclass
class ScanCheck:
    """What a cheap validation learned about one scan."""

    fmt: str
    n_slices: int
    patient_id: str = ""  # the scan's own patient id (DICOM PatientID) when present


class ScanReader(ABC):
    """One scan format. Subclass, fill the class attributes and register an instance.

    ``folder``: a scan is a folder (else a file). ``exts``: lower-case file name endings
    of a file format (the default :meth:`detect` matches them; :meth:`stem` strips them).
    ``label``: how messages name what this format looks like (``.nii/.nii.gz``, ``DICOM
    files``). ``discover``: the dataset indexer picks these scans up inside class folders.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    folder: ClassVar[bool] = False
    exts: ClassVar[tuple[str, ...]] = ()
    discover: ClassVar[bool] = True

    def detect(self, path: Path) -> bool:
        """Whether ``path`` is a scan of this format (cheap: name or folder listing)."""
        if self.folder:
            return path.is_dir() and any(self.detect_file(Path(e.path)) for e in _listing(path))
        return bool(self.exts) and path.name.lower().endswith(self.exts) and path.is_file()

    def detect_file(self, path: Path) -> bool:
        """Folder formats: whether this file, directly inside a folder, makes it a scan."""
        return bool(self.exts) and path.name.lower().endswith(self.exts)

    def rejects(self, path: Path) -> str | None:
        """Why a path that looks like this format is not a scan of it (else None)."""
        return None

    @abstractmethod
    def read(self, path: str | Path) -> Volume:
        """The whole scan as one float32 D x H x W :class:`Volume`."""

    @abstractmethod
    def count_slices(self, path: str | Path) -> int:
        """Number of slices, without decoding pixels."""

    def check(self, path: str | Path, full: bool = False) -> ScanCheck:
        """Verify a scan so that :meth:`read` will read it; ``full`` reads it whole.

        Without ``full`` it runs :meth:`check_quick`, which formats whose pixel data can be
        bad behind a sound header override to decode what they can, one slice at a time.
        """
        if full:
            v = self.read(path)
            return ScanCheck(self.name, v.shape[0], str(v.meta.get("patient_id", "")))
        return self.check_quick(path)

    def check_quick(self, path: str | Path) -> ScanCheck:
        """The index-time check without a full read: counts slices unless overridden."""
        return ScanCheck(self.name, self.count_slices(path))

    def stem(self, name: str) -> str:
        """A scan's file name without this format's extension (folders: unchanged)."""
        low = name.lower()
        for ext in sorted(self.exts, key=len, reverse=True):
            if not self.folder and low.endswith(ext):
                return name[: -len(ext)]
        return name


def _listing(folder: Path) -> list[os.DirEntry]:
    return [e for e in os.scandir(folder) if e.is_file() and not is_hidden(e.name)]


# --------------------------------------------------------------------------- registry

READERS: dict[str, ScanReader] = {}


def register_reader(reader: ScanReader) -> ScanReader:
    """Add a format; detection asks it after the readers registered before it."""
    if not isinstance(reader, ScanReader):
        raise TypeError(f"expected a ScanReader instance, got {reader!r}")
    if reader.name in READERS:
        raise ValueError(f"a reader for format {reader.name!r} is already registered")
    READERS[reader.name] = reader
    return reader


def unregister_reader(name: str) -> ScanReader:
    """Remove a format (KeyError when it is not registered); returns its reader."""
    return READERS.pop(name)


def _labels(folder: bool) -> list[str]:
    out: list[str] = []
    for r in READERS.values():
        if r.folder == folder and r.label not in out:
            out.append(r.label)
    return out


def folder_formats() -> str:
    """What a scan folder may hold, for messages: ``slice images or DICOM files``."""
    return " or ".join(_labels(folder=True))


def folder_kind(path: Path) -> str | None:
    """Format of a scan folder, or None when no scan files lie directly inside."""
    for r in READERS.values():
        if r.folder and r.detect(path):
            return r.name
    return None


def scan_file_format(path: Path) -> str | None:
    """Format of a file the indexer treats as a scan inside a class folder, else None."""
    for r in READERS.values():
        if not r.folder and r.discover and r.detect(path):
            return r.name
    return None


def scan_stem(name: str) -> str:
    """A scan file's name without its format's extension (other names unchanged)."""
    for r in READERS.values():
        stem = r.stem(name)
        if stem != name:
            return stem
    return name


def detect_format(path: str | Path) -> str:
    """Format name of a scan path (the first reader that detects it); DataError when none."""
    p = Path(path)
    for r in READERS.values():
        if r.detect(p):
            return r.name
    for r in READERS.values():
        reason = r.rejects(p)
        if reason:
            raise DataError(p, reason)
    if p.is_file():
        expected = ", ".join([*_labels(folder=False), "a folder"])
        raise DataError(p, f"unknown scan format (expected {expected})")
    if p.is_dir():
        if not any(not is_hidden(e.name) for e in os.scandir(p)):
            raise DataError(p, "empty folder")
        subs = sorted(e.name for e in os.scandir(p) if e.is_dir() and not is_hidden(e.name))
        hint = ""
        if subs:
            shown = ", ".join(subs[:3]) + (", ..." if len(subs) > 3 else "")
            hint = (f"; it has {len(subs)} subfolder(s) ({shown}): pass each scan's own folder "
                    "(one series), or index the tree with `volnas data index`")
        raise DataError(p, f"folder holds no {folder_formats()}{hint}")
    raise DataError(p, "no such file or folder")


def reader_for(path: str | Path, fmt: str | None = None) -> ScanReader:
    """The reader of ``fmt`` (a key of :data:`READERS`), or of the detected format."""
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise DataError(path, f"unknown format {fmt!r}; known: {sorted(READERS)}")
    return READERS[fmt]


def read_scan(path: str | Path, fmt: str | None = None) -> Volume:
    """Read one scan; ``fmt`` is a key of :data:`READERS` or None to detect it."""
    return reader_for(path, fmt).read(str(path))


def count_slices(path: str | Path, fmt: str | None = None) -> int:
    """Number of slices, cheaply (file count or header), without decoding pixels."""
    return reader_for(path, fmt).count_slices(path)


def check_scan(path: str | Path, fmt: str | None = None, *, full: bool = False) -> ScanCheck:
    """Verify a scan: what passes here, :func:`read_scan` reads.

    Every slice / DICOM frame is decoded and a .nii.gz decompressed to its end, one slice
    at a time (integer NIfTI data is size-checked, not converted); ``full=True`` reads the
    whole volume with :func:`read_scan` instead. Raises DataError naming the bad file.
    """
    return reader_for(path, fmt).check(path, full)
