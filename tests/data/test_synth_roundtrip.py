"""Synthetic chest CT: every written layout reads back through volnas's own readers."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volnas.data.index import build_index
from volnas.data.readers import read_scan
from volnas.data.synth import make_volume, synthesize


@pytest.mark.parametrize("fmt", ["png", "tiff", "nifti", "dicom", "npz"])
def test_every_format_indexes_and_reads_back(tmp_path: Path, fmt: str) -> None:
    res = synthesize(tmp_path / fmt, scans=8, fmt=fmt, classes=3, shape=(12, 32, 32), seed=1)
    assert len(res.scans) == 8
    source = res.out / "synth.npz" if fmt == "npz" else res.out
    index = build_index(source, split=(0.5, 0.25, 0.25), seed=0)
    # MedMNIST-style npz files carry integer labels only
    expected = ["0", "1", "2"] if fmt == "npz" else ["cap", "covid", "normal"]
    assert sorted(index.classes) == expected
    assert len(index.rows) == 8
    by_patient: dict[str, set[str]] = {}
    for s in res.scans:
        by_patient.setdefault(s.patient_id, set()).add(s.class_name)
    assert all(len(labels) == 1 for labels in by_patient.values())  # a patient has one class
    for scan in res.scans:
        if scan.mask_path is None:
            continue
        path = str(scan.path) if fmt != "npz" else f"{scan.path}#{scan.split}/{scan.index}"
        vol = read_scan(path)
        mask = nib.load(scan.mask_path)
        m = np.asarray(mask.dataobj).transpose(2, 1, 0)
        assert m.shape == vol.shape, (fmt, m.shape, vol.shape)
        assert m.any()
        if fmt in ("nifti", "dicom"):
            assert vol.is_hu
            np.testing.assert_allclose(mask.affine, vol.affine, atol=1e-3)
            assert vol.array.min() < -900 and -1000 <= np.median(vol.array[m > 0]) < 100


def test_hu_ranges_and_determinism() -> None:
    a, ma = make_volume(np.random.default_rng(3), "covid", (16, 48, 48))
    b, mb = make_volume(np.random.default_rng(3), "covid", (16, 48, 48))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    n, mn = make_volume(np.random.default_rng(4), "normal", (16, 48, 48))
    assert not mn.any() and ma.any()
    assert a.min() < -950  # air
    lesion = a[ma > 0]
    assert -900 < np.median(lesion) < 0  # ground glass is denser than lung, lighter than tissue
