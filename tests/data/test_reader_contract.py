"""The reader contract: adding a scan format is one ScanReader class, nothing else."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from volnas.cli.main import app
from volnas.data.manifest import read_manifest
from volnas.data.readers import (
    READERS,
    ScanCheck,
    ScanReader,
    check_scan,
    count_slices,
    detect_format,
    read_scan,
    reader_for,
    register_reader,
    unregister_reader,
)
from volnas.data.volume import DataError, Volume, check_voxel_budget


class TextVolumeReader(ScanReader):
    """A made-up format: ``D H W`` on the first line, then the D*H*W values as text."""

    name = "voltxt"
    label = ".vol.txt"
    exts = (".vol.txt",)

    @staticmethod
    def _shape(path: Path) -> tuple[int, int, int]:
        with open(path) as f:
            head = f.readline().split()
        if len(head) != 3 or not all(h.isdigit() for h in head):
            raise DataError(path, f"first line must be 'D H W', got {' '.join(head)!r}")
        shape = (int(head[0]), int(head[1]), int(head[2]))
        check_voxel_budget(path, shape, "shape (D H W line)")
        return shape

    def read(self, path: str | Path) -> Volume:
        p = Path(path)
        shape = self._shape(p)
        values = np.array(p.read_text().split()[3:], dtype=np.float32)
        if values.size != int(np.prod(shape)):
            raise DataError(p, f"{values.size} values, the header {shape} needs {np.prod(shape)}")
        return Volume(array=values.reshape(shape), source=str(p), meta={"format": self.name})

    def count_slices(self, path: str | Path) -> int:
        return self._shape(Path(path))[0]


def write_voltxt(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = " ".join(str(n) for n in array.shape)
    path.write_text(head + "\n" + " ".join(str(int(v)) for v in array.ravel()) + "\n")
    return path


@pytest.fixture
def voltxt() -> Iterator[ScanReader]:
    reader = register_reader(TextVolumeReader())
    try:
        yield reader
    finally:
        unregister_reader("voltxt")


def test_without_the_class_the_format_is_unknown(tmp_path):
    f = write_voltxt(tmp_path / "s.vol.txt", np.zeros((2, 2, 2)))
    assert "voltxt" not in READERS
    with pytest.raises(DataError, match="unknown scan format"):
        detect_format(f)
    with pytest.raises(DataError, match="unknown format 'voltxt'"):
        read_scan(f, "voltxt")


def test_registered_class_reads_counts_checks_and_detects(tmp_path, voltxt):
    a = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    f = write_voltxt(tmp_path / "scan.vol.txt", a)
    assert detect_format(f) == "voltxt"
    assert reader_for(f) is voltxt
    v = read_scan(f)
    assert v.array.dtype == np.float32 and v.shape == (3, 4, 5)
    np.testing.assert_array_equal(v.array, a)
    assert count_slices(f) == 3
    assert check_scan(f) == ScanCheck("voltxt", 3)
    assert check_scan(f, full=True) == ScanCheck("voltxt", 3)

    bad = tmp_path / "bad.vol.txt"
    bad.write_text("3 4 5\n1 2 3\n")
    assert check_scan(bad) == ScanCheck("voltxt", 3)  # the default check reads the header only
    with pytest.raises(DataError, match=r"bad\.vol\.txt.*3 values"):
        check_scan(bad, full=True)
    # the built-in formats still detect as before
    with pytest.raises(DataError, match="unknown scan format"):
        detect_format(write_voltxt(tmp_path / "s.txt", a))


def test_registry_refuses_a_second_reader_of_a_name(voltxt):
    with pytest.raises(ValueError, match="already registered"):
        register_reader(TextVolumeReader())
    with pytest.raises(TypeError):
        register_reader(TextVolumeReader)  # the class, not an instance
    assert list(READERS)[:4] == ["nifti", "npz", "slices", "dicom"]


def test_data_index_finds_the_new_format(tmp_path, voltxt):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    depth = {}
    for cls in ("healthy", "sick"):
        for i in range(4):  # root/<class>/<study>.vol.txt: patient = the file's stem
            d = 2 + i
            depth[f"{cls}/p{i}"] = d
            write_voltxt(root / cls / f"p{i}.vol.txt", rng.integers(0, 9, (d, 3, 3)))
    # root/<class>/<patient>/<study>.vol.txt: patient = the folder
    write_voltxt(root / "sick" / "p9" / "late.vol.txt", rng.integers(0, 9, (6, 3, 3)))
    depth["sick/p9/late"] = 6
    (root / "healthy" / "notes.txt").write_text("plain text files are still ignored\n")

    out = tmp_path / "m" / "manifest.csv"
    result = CliRunner().invoke(app, ["data", "index", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    with open(out, newline="") as fh:
        rows = {r["scan_id"]: r for r in csv.DictReader(fh)}
    assert {k: int(r["n_slices"]) for k, r in rows.items()} == depth
    assert {r["format"] for r in rows.values()} == {"voltxt"}
    assert rows["healthy/p2"]["patient_id"] == "p2"
    assert rows["sick/p9/late"]["patient_id"] == "p9"
    assert rows["sick/p9/late"]["label"] == "sick"
    manifest = read_manifest(out)
    assert read_scan(next(r.path for r in manifest if r.scan_id == "sick/p9/late")).shape[0] == 6

    unregister_reader("voltxt")
    try:
        with pytest.raises(DataError, match="unknown format 'voltxt'"):
            read_manifest(out)
    finally:
        register_reader(voltxt)  # the fixture unregisters it
