"""Hostile input: shared manifest folders, lying or truncated files, oversized headers, DICOM
series without positions, and what ``volnas data index`` suggests when it fails."""

from __future__ import annotations

import gzip
import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from volnas.cli.main import app
from volnas.data import volume
from volnas.data.dataset import open_source
from volnas.data.index import build_index
from volnas.data.manifest import read_manifest_info, write_manifest
from volnas.data.readers import check_scan, read_scan
from volnas.data.volume import DataError

# --------------------------------------------------------------------------- writers


def png_scan(folder: Path, n: int = 3, shape: tuple[int, int] = (6, 7)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full(shape, 10 * i, np.uint8)).save(folder / f"{i + 1}.png")
    return folder


def tree(root: Path, classes: dict[str, int]) -> Path:
    """root/<class>/<patient>/s/ with ``classes[c]`` one-scan patients per class."""
    for cls, k in classes.items():
        for p in range(k):
            png_scan(root / cls / f"{cls}_p{p}" / "s")
    return root


def ct_slice(path: Path, pixels: np.ndarray, *, ipp: float | None, instance: int) -> Path:
    """A minimal uncompressed CT slice (ExplicitVRLittleEndian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.SeriesInstanceUID = "CT", "P1", "1.2.3.4"
    if ipp is not None:
        ds.ImagePositionPatient = [-5.0, -7.0, ipp]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 2.0
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def series(folder: Path, n: int = 3, shape: tuple[int, int] = (4, 5)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        ct_slice(folder / f"{k}.dcm", np.full(shape, 1000 + k, np.uint16), ipp=2.0 * k,
                 instance=k + 1)
    return folder


def nifti_gz(path: Path, shape: tuple[int, int, int] = (4, 5, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape) - 1000
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def header_only_nifti_gz(path: Path, shape: tuple[int, ...]) -> Path:
    """A tiny .nii.gz whose header claims ``shape`` int16 (a few bytes of data follow)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\0" * 64))
    return path


# --------------------------------------------------------------------------- item 4: sidecars


def test_two_manifests_in_one_folder_keep_their_own_classes(tmp_path):
    a = tree(tmp_path / "a", {"covid": 3, "normal": 3})
    b = tree(tmp_path / "b", {"cap": 3, "covid": 3, "normal": 3})
    out = tmp_path / "m"
    write_manifest(build_index(a, split=(0.34, 0.33, 0.33)), out / "a.csv")
    write_manifest(build_index(b, split=(0.34, 0.33, 0.33), positive_class="cap"), out / "b.csv")
    assert sorted(p.name for p in out.iterdir()) == [
        "a.csv", "a.manifest.json", "a.skipped.csv", "b.csv", "b.manifest.json", "b.skipped.csv"]
    src_a, src_b = open_source(out / "a.csv"), open_source(out / "b.csv")
    assert (src_a.class_names, src_a.positive_class) == (["covid", "normal"], "covid")
    assert (src_b.class_names, src_b.positive_class) == (["cap", "covid", "normal"], "cap")

    # a.csv replaced (here by b's rows) after indexing: its sidecar no longer matches
    shutil.copy(out / "b.csv", out / "a.csv")
    with pytest.raises(DataError, match=r"a\.csv: does not match its sidecar .*a\.manifest\.json"):
        open_source(out / "a.csv")


def test_legacy_manifest_json_only_when_consistent(tmp_path):
    a = tree(tmp_path / "a", {"covid": 3, "normal": 3})
    csv_path = write_manifest(build_index(a, split=(0.34, 0.33, 0.33)), tmp_path / "m" / "a.csv")
    legacy = csv_path.parent / "manifest.json"
    (csv_path.parent / "a.manifest.json").rename(legacy)  # what older versions wrote
    (csv_path.parent / "a.skipped.csv").unlink()
    src = open_source(csv_path)
    assert (src.class_names, src.positive_class) == (["covid", "normal"], "covid")

    import json

    old = json.loads(legacy.read_text())
    # another data set's sidecar: three classes, one of them absent from a.csv
    legacy.write_text(json.dumps({**old, "classes": ["cap", "covid", "normal"]}))
    with pytest.raises(DataError, match=r"a\.csv: its sidecar .*manifest\.json lists classes "
                       r"\['cap', 'covid', 'normal'\].*Re-index"):
        open_source(csv_path)
    # the same classes but a positive class the CSV does not have
    legacy.write_text(json.dumps({**old, "classes": ["covid", "normal"],
                                  "positive_class": "cap"}))
    with pytest.raises(DataError, match="positive class 'cap'.*Re-index"):
        read_manifest_info(csv_path)


# --------------------------------------------------------------------------- item 6: verify


def truncated_jpeg_scan(folder: Path) -> Path:
    folder.mkdir(parents=True)
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    for i in (1, 2, 3):
        Image.fromarray(img).save(folder / f"{i}.jpg", quality=95)
    raw = (folder / "2.jpg").read_bytes()
    (folder / "2.jpg").write_bytes(raw[: len(raw) // 2])
    return folder / "2.jpg"


def truncated_tiff_scan(folder: Path) -> Path:
    import tifffile

    folder.mkdir(parents=True)
    a = np.random.default_rng(0).integers(0, 4000, (64, 64), dtype=np.uint16)
    for i in (1, 2, 3):
        tifffile.imwrite(folder / f"t{i}.tif", a)
    raw = (folder / "t3.tif").read_bytes()
    (folder / "t3.tif").write_bytes(raw[: len(raw) * 6 // 10])
    return folder / "t3.tif"


def bad_idat_png_scan(folder: Path) -> Path:
    """A PNG whose compressed pixel data is damaged but whose chunk CRCs are right."""
    png_scan(folder)
    f = folder / "3.png"
    raw = bytearray(f.read_bytes())
    i = raw.index(b"IDAT")
    n = struct.unpack(">I", raw[i - 4 : i])[0]
    raw[i + 4 : i + 4 + n] = b"\xff" * n
    raw[i + 4 + n : i + 8 + n] = struct.pack(">I", zlib.crc32(bytes(raw[i : i + 4 + n])))
    f.write_bytes(bytes(raw))
    return f


def undecodable_rle_series(folder: Path) -> Path:
    """An RLE-compressed series whose second slice's RLE stream is too short."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    series(folder, shape=(8, 8))
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        if f.name == "1.dcm":
            header = struct.pack("<16I", 2, 64, 70, *([0] * 13))  # 2 segments of 6 bytes
            ds.PixelData = encapsulate([header + b"\x05" + b"\0" * 6 + b"\x05" + b"\0" * 5])
        ds.save_as(f)
    return folder / "1.dcm"


def lying_nifti_gz(path: Path) -> Path:
    """A valid 4 x 5 x 3 int16 .nii.gz whose header then claims 30 slices."""
    nifti_gz(path)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[46:48] = struct.pack("<h", 30)  # dim[3]
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def truncated_nifti_gz(path: Path) -> Path:
    nifti_gz(path, (16, 16, 8))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    return path


def test_index_decodes_what_it_accepts(tmp_path):
    root = tree(tmp_path / "d", {"covid": 3, "normal": 3})
    bad = {
        "2.jpg": truncated_jpeg_scan(root / "covid" / "pj" / "s"),
        "3.png": bad_idat_png_scan(root / "covid" / "pp" / "s"),
        "t3.tif": truncated_tiff_scan(root / "normal" / "pt" / "s"),
        "1.dcm": undecodable_rle_series(root / "normal" / "pd" / "s"),
        "lie.nii.gz": lying_nifti_gz(root / "normal" / "lie.nii.gz"),
        "cut.nii.gz": truncated_nifti_gz(root / "covid" / "cut.nii.gz"),
    }
    for name, f in bad.items():
        scan = f if name.endswith(".nii.gz") else f.parent
        with pytest.raises(DataError) as err:
            check_scan(scan)
        assert err.value.path == str(f), (name, str(err.value))
    lie = str(bad["lie.nii.gz"])
    with pytest.raises(DataError, match="decompresses to 472 bytes, its header needs 1552"):
        check_scan(lie)
    with pytest.raises(DataError) as err:
        build_index(root)
    # every bad scan in one error, each with its file and reason, so one pass fixes them all
    assert err.value.bad_scan and f"{len(bad)} bad scans" in str(err.value)
    for f in bad.values():
        assert str(f) in str(err.value), str(err.value)
    assert "decompresses to 472 bytes" in str(err.value)
    res = build_index(root, skip_bad=True, split=(0.34, 0.33, 0.33))
    assert len(res.rows) == 6
    assert sorted(Path(s.reason.split(": ")[0]).name for s in res.skipped) == sorted(bad)


# --------------------------------------------------------------------------- item 7: budget


def test_header_beyond_the_voxel_budget_is_refused_before_reading(tmp_path):
    root = tree(tmp_path / "d", {"covid": 3, "normal": 3})
    huge = header_only_nifti_gz(root / "covid" / "huge.nii.gz", (4000, 4000, 4000))
    with pytest.raises(DataError) as err:
        build_index(root)
    assert err.value.path == str(huge)
    assert "claimed shape" in str(err.value) and "4000 x 4000 x 4000" in str(err.value)
    assert "1,073,741,824 voxels" in str(err.value) and "VOLNAS_MAX_VOXELS" in str(err.value)
    res = build_index(root, skip_bad=True, split=(0.34, 0.33, 0.33))
    assert [s.path for s in res.skipped] == [str(huge)] and len(res.rows) == 6
    # 1200^3 int16 would need 3.4 GB raw, 6.9 GB as float32: refused from the header
    big = header_only_nifti_gz(tmp_path / "big.nii.gz", (1200, 1200, 1200))
    with pytest.raises(DataError, match=r"big\.nii\.gz: claimed shape .*1200 x 1200 x 1200"):
        read_scan(big)


def test_voxel_budget_applies_to_every_reader(tmp_path, monkeypatch):
    from volnas.data.cache import StackCache
    from volnas.data.preprocess import PreprocessConfig

    npz = tmp_path / "m.npz"
    np.savez_compressed(npz, **{f"{s}_images": np.zeros((2, 4, 5, 6), np.uint8) for s in
                                ("train", "val", "test")},
                        **{f"{s}_labels": np.zeros((2, 1), np.uint8) for s in
                           ("train", "val", "test")})
    scans = {
        "nifti": (nifti_gz(tmp_path / "n.nii.gz"), "4 x 5 x 3"),  # 60 voxels
        "dicom": (series(tmp_path / "dcm"), "3 x 4 x 5"),
        "slices": (png_scan(tmp_path / "png"), "3 x 6 x 7"),
        "npz": (f"{npz}#val/1", "2 x 4 x 5 x 6"),
    }
    monkeypatch.setenv("VOLNAS_MAX_VOXELS", "59")
    for scan, shape in scans.values():
        for fn in (read_scan, check_scan):
            with pytest.raises(DataError, match=f"claimed .*{shape} = .* budget of 59 voxels"):
                fn(scan)
    with pytest.raises(DataError, match=r"n\.nii\.gz: .*budget"):  # training and predict
        StackCache(PreprocessConfig(), tmp_path / "cache").get(str(scans["nifti"][0]), "nifti")
    monkeypatch.setenv("VOLNAS_MAX_VOXELS", "2.4e2")
    for fmt, (scan, _) in scans.items():
        assert read_scan(scan).meta["format"] == fmt
    assert volume.max_voxels() == 240
    monkeypatch.setenv("VOLNAS_MAX_VOXELS", "lots")
    with pytest.raises(ValueError, match="VOLNAS_MAX_VOXELS='lots' is not a positive number"):
        read_scan(scans["nifti"][0])


# --------------------------------------------------------------------------- item 8: DICOM


def test_dicom_without_position_in_one_file_warns_and_never_mixes(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    # positions say 0 < 1 < 2 < 3; instance numbers say 3, 2, 1, 0 (the fallback order)
    for k in range(4):
        ct_slice(folder / f"f{k}.dcm", np.full((3, 3), 1024 + k, np.uint16),
                 ipp=None if k == 2 else 2.0 * k, instance=4 - k)
    with pytest.warns(volume.DataWarning, match=r"missing in 1 of 4 files \(f2\.dcm\).*InstanceNumber"):
        v = read_scan(folder)
    assert v.meta["ordered_by"] == "InstanceNumber"
    assert v.array[:, 0, 0].tolist() == [3, 2, 1, 0]  # one rule for the whole series
    assert v.affine[:3, 3].tolist() == [0.0, 0.0, 0.0]
    with pytest.warns(volume.DataWarning, match=r"f2\.dcm"):
        assert check_scan(folder).n_slices == 4


# --------------------------------------------------------------------------- item 13: CLI


def test_cli_suggests_skip_bad_only_for_bad_scans(tmp_path):
    runner = CliRunner()
    hint = "pass --skip-bad"
    small = tree(tmp_path / "small", {"covid": 1, "normal": 1})  # 2 patients, 3 splits
    for extra in ([], ["--skip-bad"]):
        res = runner.invoke(app, ["data", "index", str(small), "--out",
                                  str(tmp_path / f"s{len(extra)}.csv"), *extra])
        assert res.exit_code == 2 and "cannot fill 3 non-empty splits" in res.output
        assert hint not in res.output, res.output
    root = tree(tmp_path / "d", {"covid": 3, "normal": 3})
    truncated_jpeg_scan(root / "covid" / "pj" / "s")
    res = runner.invoke(app, ["data", "index", str(root), "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "2.jpg" in res.output and hint in res.output
    res = runner.invoke(app, ["data", "index", str(root), "--out", str(tmp_path / "m" / "x.csv"),
                              "--split", "0.34,0.33,0.33", "--skip-bad"])
    assert res.exit_code == 0, res.output
    assert "x.skipped.csv" in " ".join(res.output.split()) and hint not in res.output
    assert (tmp_path / "m" / "x.skipped.csv").read_text().count("2.jpg") == 1


def test_cli_shows_a_left_out_localizer_as_a_warning_line(tmp_path):
    """A scout beside its series is indexed without it, and `data index` says so in one
    plain warning line (not a Python warning with its source line)."""
    import pydicom

    from volnas.data.synth import synthesize

    res = synthesize(tmp_path / "d", scans=8, fmt="dicom", classes=2, shape=(8, 16, 16), seed=1)
    series = next(p.parent for p in sorted(res.out.rglob("*.dcm")))
    ds = pydicom.dcmread(next(series.glob("*.dcm")))
    ds.SeriesInstanceUID, ds.SOPInstanceUID = "7.7.7", "7.7.7.1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(series / "scout.dcm")
    out = CliRunner().invoke(app, ["data", "index", str(res.out), "--out",
                                   str(tmp_path / "m.csv")])
    assert out.exit_code == 0, out.output
    assert "warning:" in out.output and "scout.dcm" in out.output
    assert "DataWarning" not in out.output
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert len(rows) == 1 + 8  # every scan indexed, the scout's series too
