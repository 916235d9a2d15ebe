"""Manifests: the rows an index finds (one per scan, with its patient and split), the CSV and
its sidecars written and read back (checked against each other), and their summary table.

Manifest CSV columns: scan_id, path, format, label, patient_id, n_slices, split. Paths are
written relative to the manifest's folder (portable with the data) and resolved to absolute
paths by :func:`read_manifest`. Two sidecars are named after the CSV (``NAME.csv`` ->
``NAME.manifest.json``, ``NAME.skipped.csv``), so several manifests can share a folder.
``NAME.manifest.json`` holds classes (in class-index order), positive class, source, seed,
split fractions, the skipped list and the CSV's name and sha256, checked when it is read (a
CSV changed after indexing is an error). ``NAME.skipped.csv`` lists skipped scans (path,
reason). A plain ``manifest.json`` from older versions is used only when its classes are
exactly the CSV's labels and its positive class is among them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from volnas.core.files import atomic_write_bytes
from volnas.data.readers import READERS, natural_key
from volnas.data.volume import DataError

if TYPE_CHECKING:
    from rich.table import Table


SPLITS = ("train", "val", "test")


COLUMNS = ("scan_id", "path", "format", "label", "patient_id", "n_slices", "split")


@dataclass
class ManifestRow:
    """One scan of the manifest; ``path`` may carry an npz item suffix ``#split/i``."""

    scan_id: str
    path: str
    format: str
    label: str
    patient_id: str
    n_slices: int
    split: str


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class IndexResult:
    rows: list[ManifestRow]
    classes: list[str]
    positive_class: str | None
    source: str
    seed: int
    split: tuple[float, float, float] | None  # None: official splits (npz)
    layout: str
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def class_names(rows: Iterable[ManifestRow]) -> list[str]:
    """Distinct labels in class-index order (natural, case-insensitive sort)."""
    return sorted({r.label for r in rows}, key=lambda n: (natural_key(n), n))


def _rel(path: str, base: Path) -> str:
    file, sep, frag = path.partition("#")
    return (
        Path(os.path.relpath(os.path.abspath(file), os.path.abspath(base))).as_posix() + sep + frag
    )


def sidecar_paths(csv_path: Path | str) -> tuple[Path, Path]:
    """``NAME.csv`` -> (``NAME.manifest.json``, ``NAME.skipped.csv``) beside it."""
    p = Path(csv_path)
    stem = p.stem if p.suffix.lower() == ".csv" else p.name
    return p.with_name(f"{stem}.manifest.json"), p.with_name(f"{stem}.skipped.csv")



def write_manifest(result: IndexResult, out_csv: Path | str) -> Path:
    """Write the CSV and its sidecars (``NAME.manifest.json``, ``NAME.skipped.csv``).

    The sidecars are written first and the CSV last, each atomically, so an interrupted
    write never leaves a CSV with another CSV's sidecar. Returns the CSV path.
    """
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    base = out_csv.parent
    info_path, skipped_path = sidecar_paths(out_csv)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in result.rows:
        d = asdict(r)
        d["path"] = _rel(r.path, base)
        w.writerow([d[c] for c in COLUMNS])
    data = buf.getvalue().encode()
    sk = io.StringIO(newline="")
    w = csv.writer(sk)
    w.writerow(("path", "reason"))
    for s in result.skipped:
        w.writerow((s.path, s.reason))
    sidecar = {
        "manifest": out_csv.name,
        "manifest_sha256": hashlib.sha256(data).hexdigest(),
        "skipped_csv": skipped_path.name,
        "classes": result.classes,
        "positive_class": result.positive_class,
        "source": result.source,
        "layout": result.layout,
        "seed": result.seed,
        "split": list(result.split) if result.split is not None else "official",
        "n_scans": len(result.rows),
        "n_patients": len({r.patient_id for r in result.rows}),
        "skipped": [asdict(s) for s in result.skipped],
        "notes": result.notes,
    }
    atomic_write_bytes(skipped_path, sk.getvalue().encode())
    atomic_write_bytes(info_path, (json.dumps(sidecar, indent=2) + "\n").encode())
    atomic_write_bytes(out_csv, data)
    return out_csv


def _load_json(f: Path) -> dict:
    try:
        info = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f, f"unreadable manifest sidecar ({type(e).__name__}: {e})") from e
    if not isinstance(info, dict):
        raise DataError(f, "manifest sidecar is not a JSON object")
    return info


def read_manifest_info(
    csv_path: Path | str, rows: Sequence[ManifestRow] | None = None
) -> dict:
    """The sidecar of a manifest CSV, checked against the CSV ({} when there is none).

    ``NAME.manifest.json`` must record the CSV's sha256 (a CSV edited or replaced after
    indexing is a DataError naming both files). Without it, a legacy ``manifest.json`` in
    the folder is used only when its classes are exactly the CSV's labels and its positive
    class is one of them; otherwise a DataError asks to re-index. ``rows``: the CSV's rows
    when already read (else read here for the legacy check).
    """
    p = Path(csv_path)
    side, _ = sidecar_paths(p)
    if side.is_file():
        info = _load_json(side)
        recorded = info.get("manifest_sha256")
        if recorded is not None:
            try:
                actual = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError as e:
                raise DataError(p, f"cannot read manifest ({e})") from e
            if actual != recorded:
                raise DataError(
                    p,
                    f"does not match its sidecar {side} (written for "
                    f"{info.get('manifest', '?')!r} with sha256 {str(recorded)[:12]}..., this "
                    f"CSV has {actual[:12]}...): it was edited or replaced after indexing. "
                    f"Re-index with `volnas data index`, or delete {side.name} to use the "
                    "CSV's own labels as the classes",
                )
            return info
        return _check_legacy(p, side, info, rows)
    legacy = p.parent / "manifest.json"
    if legacy.is_file():
        return _check_legacy(p, legacy, _load_json(legacy), rows)
    return {}


def _check_legacy(
    csv_path: Path, side: Path, info: dict, rows: Sequence[ManifestRow] | None
) -> dict:
    """A sidecar without the CSV's hash: use it only if it agrees with the CSV's labels."""
    labels = {r.label for r in (rows if rows is not None else read_manifest(csv_path))}
    classes = info.get("classes")
    positive = info.get("positive_class")
    problem = None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        problem = "has no class list"
    elif set(classes) != labels:
        problem = f"lists classes {classes}, the CSV's labels are {sorted(labels)}"
    elif positive is not None and positive not in labels:
        problem = f"names positive class {positive!r}, which is not among the CSV's labels"
    if problem is None:
        return info
    new_side, _ = sidecar_paths(csv_path)
    raise DataError(
        csv_path,
        f"its sidecar {side} {problem}: it belongs to another manifest or to an edited "
        f"one. Re-index with `volnas data index` (which writes {new_side.name} beside the "
        "CSV)",
    )


def read_manifest(csv_path: Path | str) -> list[ManifestRow]:
    """Read and validate a manifest; paths come back absolute."""
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        raise DataError(
            csv_path,
            "a folder, not a manifest: index it first (patient-grouped splits, every scan "
            f"checked): `volnas data index {csv_path} --out {csv_path.name or 'data'}.csv`, "
            f"then pass --data {csv_path.name or 'data'}.csv",
        )
    if not csv_path.is_file():
        raise DataError(csv_path, "manifest not found")
    base = Path(os.path.abspath(csv_path.parent))
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    patient_split: dict[str, tuple[str, int]] = {}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(csv_path, f"missing column(s) {missing}; expected {list(COLUMNS)}")
        for line, rec in enumerate(reader, start=2):
            where = f"{csv_path} line {line}"
            empty = [c for c in COLUMNS if not (rec.get(c) or "").strip()]
            if empty:
                raise DataError(where, f"empty field(s) {empty}")
            vals = {c: rec[c].strip() for c in COLUMNS}
            if vals["format"] not in READERS:
                raise DataError(
                    where, f"unknown format {vals['format']!r}; known {sorted(READERS)}"
                )
            if vals["split"] not in SPLITS:
                raise DataError(where, f"split {vals['split']!r} is not one of {SPLITS}")
            try:
                n = int(vals["n_slices"])
            except ValueError:
                n = -1
            if n < 1:
                raise DataError(where, f"n_slices {vals['n_slices']!r} is not a positive integer")
            if vals["scan_id"] in seen:
                raise DataError(
                    where, f"scan_id {vals['scan_id']!r} repeats line {seen[vals['scan_id']]}"
                )
            seen[vals["scan_id"]] = line
            pid = vals["patient_id"]
            if pid in patient_split and patient_split[pid][0] != vals["split"]:
                s0, l0 = patient_split[pid]
                raise DataError(
                    where,
                    f"patient {pid!r} is in split {vals['split']!r} and in {s0!r} (line {l0})",
                )
            patient_split.setdefault(pid, (vals["split"], line))
            file, sep, frag = vals["path"].partition("#")
            p = Path(file)
            p = p if p.is_absolute() else base / p
            vals["path"] = str(Path(os.path.normpath(p))) + sep + frag
            vals["n_slices"] = n
            rows.append(ManifestRow(**vals))
    if not rows:
        raise DataError(csv_path, "manifest has no rows")
    return rows


def summary_table(rows: Sequence[ManifestRow], title: str | None = None) -> Table:
    """A rich Table of scan counts per class x split, with totals and patient counts."""
    from rich.markup import escape
    from rich.table import Table

    classes = class_names(rows)
    n = Counter((r.label, r.split) for r in rows)
    patients = {s: len({r.patient_id for r in rows if r.split == s}) for s in SPLITS}
    t = Table(title=title or f"{len(rows)} scans, {len({r.patient_id for r in rows})} patients")
    t.add_column("class")
    for s in SPLITS:
        t.add_column(s, justify="right")
    t.add_column("total", justify="right")
    for c in classes:
        t.add_row(escape(c), *(str(n[c, s]) for s in SPLITS), str(sum(n[c, s] for s in SPLITS)))
    tot = Counter(r.split for r in rows)
    t.add_section()
    t.add_row("total", *(str(tot[s]) for s in SPLITS), str(len(rows)))
    t.add_row("patients", *(str(patients[s]) for s in SPLITS), str(sum(patients.values())))
    return t
