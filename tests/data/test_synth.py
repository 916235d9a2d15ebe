"""Synthetic chest CT: anatomy, findings, masks and every on-disk layout (read back directly)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from volnas.data import synth
from volnas.data.phantom import render
from volnas.data.synth import make_volume, random_anatomy, scan_affine, synthesize

SHAPE = (32, 64, 64)
SMALL = (16, 40, 40)  # D 12..20: always some slice numbers >= 10


def _scan(seed: int, label: str, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return render(rng, label, shape, random_anatomy(rng))


def _natural(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: int(re.match(r"\d+", p.name).group()))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj).transpose(2, 1, 0), img.affine


# --------------------------------------------------------------------------- volumes


def test_make_volume_deterministic_per_seed():
    anat = random_anatomy(np.random.default_rng(3))
    a = make_volume(np.random.default_rng(5), "covid", SHAPE, anat)
    b = make_volume(np.random.default_rng(5), "covid", SHAPE, anat)
    c = make_volume(np.random.default_rng(6), "covid", SHAPE, anat)
    assert a[0].dtype == np.float32 and a[0].shape == SHAPE
    assert a[1].dtype == np.uint8 and a[1].shape == SHAPE
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # without an anatomy one is drawn from the rng
    d, _ = make_volume(np.random.default_rng(5), "normal", (10, 32, 48))
    assert d.shape == (10, 32, 48)


@pytest.mark.parametrize("label", ["normal", "covid", "cap"])
def test_hu_ranges(label):
    for seed in range(3):
        hu, mask, lung = _scan(seed, label)
        assert -1015 < np.median(hu[:, :4, :4]) < -985  # air outside the body
        assert -900 < np.median(hu[lung]) < -760  # aerated lung
        assert hu.max() > 300  # bone
        if label == "normal":
            assert not mask.any()
        elif label == "covid":
            assert -700 < hu[mask > 0].mean() < -200  # ground glass
        else:
            assert -350 < hu[mask > 0].mean() < 100  # consolidation


def test_masks_inside_lung_and_covid_subpleural():
    for seed in range(6):
        for label in ("covid", "cap"):
            _, mask, lung = _scan(seed, label)
            assert mask.any() and mask.dtype == np.uint8
            assert not (mask.astype(bool) & ~lung).any()
        _, mask, lung = _scan(seed, "covid")
        # in-plane distance (voxels) from the pleura / lung border
        depth = ndimage.distance_transform_edt(
            np.pad(lung, ((0, 0), (1, 1), (1, 1))), sampling=(1e6, 1, 1)
        )[:, 1:-1, 1:-1]
        comps, n = ndimage.label(mask)
        for k in range(1, n + 1):
            assert depth[comps == k].min() <= 1.5  # every lesion touches the border
        assert depth[mask > 0].mean() < depth[lung].mean() * 1.2


def test_signal_exists_but_not_in_mean_density():
    n = 40
    means, ggo, y = [], [], []
    for i in range(2 * n):
        label = "covid" if i % 2 else "normal"
        hu, _, lung = _scan(1000 + i, label)
        core = ndimage.binary_erosion(lung, np.ones((1, 3, 3), bool))
        means.append(hu[lung].mean())
        v = hu[core]
        ggo.append(np.mean((v > -700) & (v < -250)))
        y.append(i % 2)
    auc_mean = roc_auc_score(y, means)
    auc_ggo = roc_auc_score(y, ggo)
    assert max(auc_mean, 1 - auc_mean) < 0.8, auc_mean
    assert auc_ggo > 0.65, auc_ggo


def test_easy_difficulty_has_larger_denser_findings():
    real, easy, dense_easy, dense_real = [], [], [], []
    for seed in range(8):
        anat = random_anatomy(np.random.default_rng([7, seed]))
        for diff, fracs, dense in (("realistic", real, dense_real), ("easy", easy, dense_easy)):
            hu, mask, lung = render(np.random.default_rng(seed), "covid", SMALL, anat, diff)
            fracs.append(mask.sum() / lung.sum())
            dense.append(np.median(hu[mask > 0]))
    assert np.mean(easy) > 2 * np.mean(real)
    assert np.mean(dense_easy) > np.mean(dense_real) + 50
    with pytest.raises(ValueError, match="difficulty"):
        synthesize(Path("unused"), scans=2, fmt="npz", difficulty="hard")


# --------------------------------------------------------------------------- layouts


def _check_grouping(res: synth.SynthResult, d0: int) -> None:
    for pid, scans in res.patients().items():
        assert re.fullmatch(r"P\d{4}", pid)
        assert len({s.label for s in scans}) == 1
        assert 1 <= len(scans) <= 3
    counts = [s.n_slices for s in res.scans]
    assert len(set(counts)) > 1
    assert all(max(8, int(0.75 * d0)) <= c <= round(1.25 * d0) for c in counts)
    assert len({s.scan_id for s in res.scans}) == len(res.scans)
    for s in res.scans:
        assert (s.mask_path is not None) == (s.label != 0)


def _check_masks_csv(res: synth.SynthResult) -> None:
    rows = _rows(res.out / "masks.csv")
    pos = [s for s in res.scans if s.label != 0]
    assert [r["scan_id"] for r in rows] == [s.scan_id for s in pos]
    for r, s in zip(rows, pos, strict=True):
        assert (res.out / r["scan_path"]) == s.path and (res.out / r["mask_path"]) == s.mask_path
        assert r["mask_path"] == f"masks/{s.scan_id}.nii.gz"


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_slice_folder_layout(tmp_path, fmt):
    res = synthesize(tmp_path, scans=8, fmt=fmt, shape=SMALL, seed=1)
    _check_grouping(res, SMALL[0])
    _check_masks_csv(res)
    ext = "png" if fmt == "png" else "tif"
    for s in res.scans:
        assert s.path == tmp_path / s.class_name / s.patient_id / s.scan_id
        files = list(s.path.iterdir())
        assert sorted(f.name for f in files) == sorted(
            f"{k}.{ext}" for k in range(1, s.n_slices + 1)
        )
        files = _natural(files)
        if fmt == "png":
            assert Image.open(files[0]).mode == "I;16"
            vol = np.stack([np.array(Image.open(f)) for f in files])
        else:
            vol = np.stack([tifffile.imread(f) for f in files])
        assert vol.dtype == np.uint16 and vol.shape == (s.n_slices, *SMALL[1:])
        hu = vol.astype(np.float32) - synth.HU_OFFSET
        assert -1030 < np.median(hu[:, :3, :3]) < -970 and hu.max() > 300
        if s.mask_path is not None:
            mask, affine = _mask(s.mask_path)
            np.testing.assert_array_equal(affine, np.eye(4))
            assert mask.shape == vol.shape and mask.any()
            assert hu[mask > 0].mean() > -750  # mask lies on the lesion in natural slice order


@pytest.mark.parametrize("classes", [2, 3])
def test_nifti_layout(tmp_path, classes):
    res = synthesize(tmp_path, scans=9, fmt="nifti", classes=classes, shape=SMALL, seed=2)
    _check_grouping(res, SMALL[0])
    _check_masks_csv(res)
    assert res.class_names == list(synth.CLASS_NAMES[classes])
    patients = {r["file"]: r["patient_id"] for r in _rows(tmp_path / "patients.csv")}
    assert len(patients) == len(res.scans)
    for s in res.scans:
        rel = s.path.relative_to(tmp_path).as_posix()
        assert re.fullmatch(r"[^/]+/study_\d{4}\.nii\.gz", rel)
        assert patients[rel] == s.patient_id
        folder = rel.split("/")[0]
        if classes == 3:
            assert folder == s.class_name
        else:
            assert (folder == "CT-0") == (s.class_name == "normal")
            assert folder in {"CT-0", "CT-1", "CT-2", "CT-3", "CT-4"}
        img = nib.load(s.path)
        assert img.get_data_dtype() == np.int16
        hu = np.asarray(img.dataobj).transpose(2, 1, 0)
        assert hu.shape == (s.n_slices, *SMALL[1:])
        spacing = np.abs(np.diag(img.affine)[:3])
        assert spacing[0] == spacing[1] and 3 < spacing[2] < 30
        if s.mask_path is not None:
            mask, affine = _mask(s.mask_path)
            np.testing.assert_allclose(affine, img.affine)
            assert mask.shape == hu.shape and mask.any()
    # a patient's scans share the in-plane spacing
    for scans in res.patients().values():
        sx = {round(float(abs(nib.load(s.path).affine[0, 0])), 6) for s in scans}
        assert len(sx) == 1


def test_dicom_layout(tmp_path):
    res = synthesize(tmp_path, scans=6, fmt="dicom", shape=SMALL, seed=3)
    _check_grouping(res, SMALL[0])
    _check_masks_csv(res)
    series_uids, study_of = set(), {}
    for s in res.scans:
        assert s.path.parent == tmp_path / s.class_name / s.patient_id
        files = sorted(s.path.iterdir())
        assert len(files) == s.n_slices
        dss = [pydicom.dcmread(f) for f in files]  # no force: preamble and file meta present
        ds = dss[0]
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "CT" and ds.PatientID == s.patient_id
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert len({d.SeriesInstanceUID for d in dss}) == 1
        assert len({d.SOPInstanceUID for d in dss}) == s.n_slices
        series_uids.add(ds.SeriesInstanceUID)
        assert study_of.setdefault(s.patient_id, ds.StudyInstanceUID) == ds.StudyInstanceUID
        z = [float(d.ImagePositionPatient[2]) for d in dss]
        assert [float(d.SliceLocation) for d in dss] == pytest.approx(z)
        by_pos = np.argsort(z)
        assert list(by_pos) != list(range(len(files)))  # file names lie
        assert [dss[i].InstanceNumber for i in by_pos] == list(range(1, s.n_slices + 1))
        dz = np.diff(np.sort(z))
        assert np.allclose(dz, float(ds.SliceThickness), atol=1e-3)
        vol = np.stack([dss[i].pixel_array for i in by_pos]).astype(np.float32)
        hu = vol * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert -1030 < np.median(hu[:, :3, :3]) < -970 and hu.max() > 300
        if s.mask_path is not None:
            # the mask's affine is the RAS affine of the DICOM geometry (LPS -> RAS flips x, y)
            row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
            py, px = (float(v) for v in ds.PixelSpacing)
            ipp0 = np.array([float(v) for v in dss[by_pos[0]].ImagePositionPatient])
            aff = np.eye(4)
            aff[:3, 0], aff[:3, 1], aff[:3, 2] = row * px, col * py, [0, 0, dz.mean()]
            aff[:3, 3] = ipp0
            aff = np.diag([-1, -1, 1, 1]) @ aff
            mask, affine = _mask(s.mask_path)
            np.testing.assert_allclose(affine, aff, atol=1e-3)
            assert mask.shape == hu.shape and hu[mask > 0].mean() > -750
    assert len(series_uids) == len(res.scans)


def test_npz_layout(tmp_path):
    res = synthesize(tmp_path, scans=24, fmt="npz", shape=SMALL, seed=4)
    _check_masks_csv(res)
    data = np.load(tmp_path / "synth.npz")
    assert set(data.files) == {
        f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")
    }
    split_of: dict[str, str] = {}
    for s in res.scans:
        assert split_of.setdefault(s.patient_id, s.split) == s.split  # split by patient
        assert s.scan_id == f"{s.split}_{s.index:04d}" and s.n_slices == SMALL[0]
    counts = {k: sum(s.split == k for s in res.scans) for k in ("train", "val", "test")}
    assert all(counts.values()) and counts["train"] > counts["test"] > 0
    for split in ("train", "val", "test"):
        img, lab = data[f"{split}_images"], data[f"{split}_labels"]
        assert img.dtype == np.uint8 and img.shape == (counts[split], *SMALL)
        assert lab.dtype == np.uint8 and lab.shape == (counts[split], 1)
    for s in res.scans:
        assert data[f"{s.split}_labels"][s.index, 0] == s.label
        if s.mask_path is not None:
            mask, affine = _mask(s.mask_path)
            np.testing.assert_array_equal(affine, np.eye(4))
            assert mask.shape == SMALL and mask.any()
            img = data[f"{s.split}_images"][s.index]
            assert img[mask > 0].mean() > img[img > 0].min()  # lesion is brighter than air
    again = np.load(
        synthesize(tmp_path / "again", scans=24, fmt="npz", shape=SMALL, seed=4).out / "synth.npz"
    )
    for k in data.files:
        np.testing.assert_array_equal(data[k], again[k])


def test_formats_share_volumes_and_nifti_geometry(tmp_path):
    nii = synthesize(tmp_path / "n", scans=4, fmt="nifti", shape=SMALL, seed=5)
    tif = synthesize(tmp_path / "t", scans=4, fmt="tiff", shape=SMALL, seed=5)
    for a, b in zip(nii.scans, tif.scans, strict=True):
        hu_n = np.asarray(nib.load(a.path).dataobj).transpose(2, 1, 0).astype(np.float32)
        hu_t = np.stack([tifffile.imread(f) for f in _natural(list(b.path.iterdir()))])
        np.testing.assert_allclose(hu_n, hu_t.astype(np.float32) - 1024, atol=1)
    rng = np.random.default_rng(0)
    anat = random_anatomy(rng)
    aff = scan_affine(anat, (20, 64, 64))
    assert aff[2, 2] == pytest.approx(anat.coverage / 20) and aff[0, 0] == aff[1, 1] < 0


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format"):
        synthesize(tmp_path, scans=2, fmt="jpeg")
    with pytest.raises(ValueError, match="classes"):
        synthesize(tmp_path, scans=2, fmt="npz", classes=4)
    with pytest.raises(ValueError, match="label"):
        make_volume(np.random.default_rng(0), "flu", SMALL)
