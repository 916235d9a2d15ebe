"""Readers: every format to one float32 D x H x W volume, and every bad input to a DataError."""

from __future__ import annotations

import gzip
import io
import random
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from volnas.data.readers import (
    READERS,
    check_scan,
    count_slices,
    detect_format,
    load_npz_split,
    natural_key,
    read_scan,
)
from volnas.data.volume import DataError, DataWarning, Volume

# --------------------------------------------------------------------------- writers


def write_slices(folder: Path, arrays: list[np.ndarray], names: list[str], ext: str = ".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for a, n in zip(arrays, names, strict=True):
        f = folder / f"{n}{ext}"
        if ext in (".tif", ".tiff"):
            tifffile.imwrite(f, a)
        else:
            Image.fromarray(a).save(f)
    return folder


def write_ct_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    ipp: tuple[float, float, float] | None = (0.0, 0.0, 0.0),
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    spacing: tuple[float, float] = (0.7, 0.8),
    series_uid: str = "1.2.3.4.5",
    patient_id: str = "P001",
    instance: int | None = 1,
    slice_location: float | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
) -> Path:
    """A minimal valid uncompressed CT image (ExplicitVRLittleEndian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    if ipp is not None:
        ds.ImagePositionPatient = [float(x) for x in ipp]
    ds.ImageOrientationPatient = [float(x) for x in iop]
    ds.PixelSpacing = [float(x) for x in spacing]
    if slice_location is not None:
        ds.SliceLocation = slice_location
    if instance is not None:
        ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    n: int = 5,
    shape: tuple[int, int] = (6, 7),
    z0: float = -50.0,
    dz: float = 2.5,
    seed: int = 0,
    **kw,
) -> tuple[Path, list[float]]:
    """n slices at z0 + k*dz; slice k holds stored value 1024 + 10k (HU 10k); names shuffled."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"IM{i:03d}.dcm" for i in range(n)]
    random.Random(seed).shuffle(names)
    zs = [z0 + k * dz for k in range(n)]
    for k in range(n):
        px = np.full(shape, 1024 + 10 * k, dtype=np.uint16)
        px[0, 0] = 1024 + 10 * k + 1  # marks row 0 / column 0
        write_ct_slice(folder / names[k], px, ipp=(-10.0, -20.0, zs[k]), instance=n - k, **kw)
    return folder, zs


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def write_npz(path: Path, n: dict[str, int] | None = None, shape=(4, 5, 6), drop: str = ""):
    n = n or {"train": 6, "val": 2, "test": 3}
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in n.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 2).astype(np.uint8)[:, None]
    arrays.pop(drop, None)
    np.savez_compressed(path, **arrays)
    return path


# --------------------------------------------------------------------------- slices


def test_natural_sort_orders_numbers_numerically(tmp_path):
    names = ["s10", "s2", "s1", "s21", "s3"]
    arrays = [np.full((4, 5), int(n[1:]), dtype=np.uint8) for n in names]
    folder = write_slices(tmp_path / "scan", arrays, names)
    v = read_scan(folder)
    assert detect_format(folder) == "slices"
    assert v.shape == (5, 4, 5)
    assert v.array[:, 0, 0].tolist() == [1, 2, 3, 10, 21]
    assert sorted(["a10", "a2", "a1"], key=natural_key) == ["a1", "a2", "a10"]


def test_16bit_png_and_tiff_keep_full_range(tmp_path):
    a = np.array([[0, 300], [40000, 65535]], dtype=np.uint16)
    for ext in (".png", ".tif"):
        v = read_scan(write_slices(tmp_path / ext[1:], [a, a + 0], ["1", "2"], ext))
        assert v.array.dtype == np.float32
        assert v.array.max() == 65535 and v.array[0, 0, 1] == 300
        assert not v.is_hu and np.allclose(v.affine, np.eye(4))
    b = np.array([[0, 17], [128, 255]], dtype=np.uint8)
    v = read_scan(write_slices(tmp_path / "u8", [b, b], ["1", "2"]))
    assert v.array.max() == 255 and v.array[0, 0, 1] == 17


def test_rgb_slices_become_grey(tmp_path):
    grey = np.stack([np.full((3, 4), 77, np.uint8)] * 3, axis=-1)
    colour = np.zeros((3, 4, 3), np.uint8)
    colour[..., 0] = 100
    v = read_scan(write_slices(tmp_path / "rgb", [grey, colour], ["1", "2"]))
    assert v.array[0].max() == 77 and v.array[0].min() == 77  # R == G == B kept exactly
    assert np.allclose(v.array[1], 29.9, atol=1e-3)  # luma 0.299 R


def test_slice_errors_name_the_file(tmp_path):
    a = np.zeros((4, 5), np.uint8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        read_scan(empty, "slices")

    z = write_slices(tmp_path / "zero", [a, a, a], ["1", "2", "3"])
    (z / "2.png").write_bytes(b"")
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=r"2\.png.*0 bytes"):
            fn(z, "slices")

    big = np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)
    t = write_slices(tmp_path / "trunc", [big, big], ["1", "2"])
    raw = (t / "2.png").read_bytes()
    (t / "2.png").write_bytes(raw[: len(raw) // 2])
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=r"2\.png"):
            fn(t, "slices")

    m = write_slices(
        tmp_path / "mixed", [a, a, np.zeros((4, 6), np.uint8), a], ["1", "2", "3", "4"]
    )
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=r"3\.png.*\(4, 6\).*\(4, 5\)"):
            fn(m, "slices")

    one = write_slices(tmp_path / "one", [a], ["7"])
    with pytest.raises(DataError, match=r"7\.png.*at least 2 slices"):
        read_scan(one)

    f = np.zeros((4, 5), np.float32)
    g = f.copy()
    g[1, 2] = np.nan
    n = write_slices(tmp_path / "nan", [f, g, f], ["1", "2", "3"], ".tif")
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=r"2\.tif.*NaN"):
            fn(n, "slices")

    amb = write_slices(tmp_path / "amb", [a, a], ["1", "01"])
    with pytest.raises(DataError, match="ambiguous"):
        read_scan(amb)


def test_an_image_off_the_numbered_pattern_is_never_stacked_in(tmp_path):
    a = np.arange(20, dtype=np.uint8).reshape(4, 5)
    ok = write_slices(tmp_path / "ok", [a] * 3, ["IM-0001-0010", "IM-0001-0002", "IM-0001-0001"])
    assert read_scan(ok).meta["files"] == ["IM-0001-0001.png", "IM-0001-0002.png", "IM-0001-0010.png"]
    (ok / "notes.txt").write_text("ignored, listed")
    assert read_scan(ok).meta["ignored"] == ["notes.txt"]

    extra = write_slices(tmp_path / "extra", [a] * 4, ["slice_001", "slice_002", "slice_003", "preview"])
    Image.fromarray(a).save(extra / "slice_002 (copy).png")
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=r"preview\.png: not named like the folder's 3 numbered "
                           r"slices \(slice_001\.png, \.\.\.\): preview\.png, slice_002 \(copy\)\.png"):
            fn(extra, "slices")

    mixed = write_slices(tmp_path / "mixed", [a] * 3, ["1", "2", "3"])
    Image.fromarray(a).save(mixed / "4.jpg")
    with pytest.raises(DataError, match=r"4\.jpg: not named like"):
        read_scan(mixed, "slices")

    letters = write_slices(tmp_path / "letters", [a] * 3, ["a", "b", "c"])  # no numbers: no pattern
    assert read_scan(letters).shape == (3, 4, 5)


# --------------------------------------------------------------------------- DICOM


def test_dicom_orders_by_position_and_rescales_to_hu(tmp_path):
    folder, zs = write_series(tmp_path / "series", n=6, dz=2.5)
    (tmp_path / "series" / "README").write_text("not a dicom file\n")
    (tmp_path / "series" / "notes.txt").write_text("x")
    v = read_scan(folder)
    assert detect_format(folder) == "dicom"
    assert v.shape == (6, 6, 7) and v.is_hu
    assert v.array[:, 1, 1].tolist() == [0, 10, 20, 30, 40, 50]  # HU = stored - 1024
    assert v.array[2, 0, 0] == 21
    assert v.meta["patient_id"] == "P001" and v.meta["series_uid"] == "1.2.3.4.5"
    assert v.meta["modality"] == "CT" and v.meta["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert set(v.meta["ignored"]) == {"README", "notes.txt"}
    # Slice column of the affine is the IPP step (z unchanged by LPS -> RAS), x/y flipped.
    assert np.allclose(v.affine[:3, 2], [0, 0, 2.5])
    assert np.allclose(v.affine[:3, 3], [10.0, 20.0, zs[0]])
    assert np.allclose(v.spacing, (2.5, 0.7, 0.8))
    assert count_slices(folder, "dicom") == 6
    assert check_scan(folder).n_slices == 6


def test_dicom_affine_oblique_maps_voxels_to_patient_space(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    row, col = np.array([c, s, 0.0]), np.array([0.0, 0.0, -1.0])
    normal = np.cross(row, col)
    folder = tmp_path / "obl"
    folder.mkdir()
    origin = np.array([5.0, -7.0, 30.0])
    names = ["c.dcm", "a.dcm", "b.dcm", "d.dcm"]
    for k, name in enumerate(names):
        px = np.full((3, 4), 1024 + k, np.uint16)
        write_ct_slice(folder / name, px, ipp=tuple(origin + 3.0 * k * normal), iop=(*row, *col))
    v = read_scan(folder)
    assert v.array[:, 0, 0].tolist() == [0, 1, 2, 3]
    w, h, d = 2, 1, 3
    lps = origin + w * 0.8 * row + h * 0.7 * col + d * 3.0 * normal
    ras = v.affine @ np.array([w, h, d, 1.0])
    assert np.allclose(ras[:3], lps * [-1, -1, 1])


def test_dicom_fallbacks_slice_location_then_instance_number(tmp_path):
    f1 = tmp_path / "loc"
    f1.mkdir()
    for k, loc in enumerate([30.0, 10.0, 20.0]):
        write_ct_slice(
            f1 / f"x{k}.dcm",
            np.full((3, 3), 1024 + int(loc), np.uint16),
            ipp=None,
            slice_location=loc,
            instance=None,
        )
    with pytest.warns(DataWarning, match=r"loc: ImagePositionPatient missing in all 3 files"):
        v = read_scan(f1)
    assert v.array[:, 0, 0].tolist() == [10, 20, 30]
    assert v.meta["ordered_by"] == "SliceLocation"
    f2 = tmp_path / "inst"
    f2.mkdir()
    for k, inst in enumerate([3, 1, 2]):
        write_ct_slice(
            f2 / f"1.2.840.99.{k}", np.full((3, 3), 1024 + inst, np.uint16), ipp=None, instance=inst
        )
    (f2 / "README").write_text("Série exportée\n")
    with pytest.warns(DataWarning, match="ordered by InstanceNumber"):
        v = read_scan(f2)  # UID-style names without a real extension are DICOM candidates
    assert v.array[:, 0, 0].tolist() == [1, 2, 3]
    assert v.meta["ordered_by"] == "InstanceNumber"


def test_a_localizer_beside_its_series_is_left_out_with_a_warning(tmp_path):
    """A study exported into one folder often holds the scout (ImageType LOCALIZER, another
    series, another size) beside the axial series: the series is read, the scout listed."""
    import pydicom

    folder = tmp_path / "study"
    write_series(folder, n=3)
    scout = write_ct_slice(folder / "scout.dcm", np.zeros((5, 9), np.uint16),
                           ipp=(0, 0, 0), iop=(1, 0, 0, 0, 0, -1), series_uid="7.7.7")
    ds = pydicom.dcmread(scout)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(scout)
    with pytest.warns(DataWarning, match="1 localizer image.*scout.dcm"):
        v = read_scan(folder)
    with pytest.warns(DataWarning, match="1 localizer image.*scout.dcm"):
        assert check_scan(folder).n_slices == 3
    assert v.array.shape == (3, 6, 7) and "scout.dcm" in v.meta["ignored"]
    assert any("localizer" in n for n in v.meta["notes"])
    # a second series that is not a localizer is still refused
    write_ct_slice(folder / "other.dcm", np.zeros((6, 7), np.uint16), ipp=(0, 0, 99),
                   series_uid="9.9.9")
    with pytest.warns(DataWarning), pytest.raises(DataError, match="2 series mixed"):
        read_scan(folder)


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "RLELossless"])
def test_compressed_dicom_series_decode_to_the_same_hu(tmp_path, syntax):
    """PACS exports often store JPEG 2000 or RLE: both read as the uncompressed series does."""
    import pydicom
    import pydicom.encaps
    import pydicom.uid

    plain, _ = write_series(tmp_path / "plain", n=4, shape=(64, 64))
    packed = tmp_path / "packed"
    packed.mkdir()
    for f in plain.iterdir():
        ds = pydicom.dcmread(f)
        if syntax == "RLELossless":
            ds.compress(pydicom.uid.RLELossless)  # pydicom's own encoder
        else:  # Pillow's OpenJPEG encodes 16-bit lossless J2K; pydicom has no encoder without extras
            buf = io.BytesIO()
            Image.fromarray(ds.pixel_array).save(buf, format="JPEG2000", irreversible=False, no_jp2=True)
            ds.PixelData = pydicom.encaps.encapsulate([buf.getvalue()])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
        ds.save_as(packed / f.name)
    want, got = read_scan(plain), read_scan(packed)
    assert got.meta["transfer_syntax"] == str(getattr(pydicom.uid, syntax))
    np.testing.assert_array_equal(got.array, want.array)
    assert check_scan(packed).n_slices == 4


def dicom_file(path: Path, sop: str):
    """An empty DICOM dataset of SOP class ``sop`` (explicit VR little endian), to fill and save."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    return ds


def write_enhanced_ct(path: Path, frames: np.ndarray, zs: list[float], *, per_frame: bool = True,
                      slopes: list[float] | None = None) -> Path:
    """One Enhanced CT file: frames (n, rows, cols) at z = zs[k], geometry in functional groups."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    ds = dicom_file(path, EnhancedCTImageStorage)
    ds.Modality, ds.PatientID, ds.SeriesInstanceUID = "CT", "P009", "1.2.3.9"
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    orient, measures = Dataset(), Dataset()
    orient.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    measures.PixelSpacing, measures.SliceThickness = [0.7, 0.8], 2.5
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1.0, -1024.0, "HU"
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    if per_frame:
        items = []
        for k, z in enumerate(zs):
            fg, pos = Dataset(), Dataset()
            pos.ImagePositionPatient = [-10.0, -20.0, float(z)]
            fg.PlanePositionSequence = Sequence([pos])
            if slopes is not None:
                t = Dataset()
                t.RescaleSlope, t.RescaleIntercept = slopes[k], -1024.0
                fg.PixelValueTransformationSequence = Sequence([t])
            items.append(fg)
        ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_multiframe_ct_reads_as_the_same_series_of_single_files(tmp_path):
    singles, zs = write_series(tmp_path / "singles", n=5, dz=2.5)
    want = read_scan(singles)
    rng = np.random.default_rng(0)
    order = rng.permutation(5)  # frames stored out of position order
    stored = np.stack([np.full((6, 7), 1024 + 10 * k, np.uint16) for k in range(5)])
    stored[:, 0, 0] += 1
    folder = tmp_path / "enhanced"
    folder.mkdir()
    write_enhanced_ct(folder / "ct.dcm", stored[order], [zs[k] for k in order])
    for fn in (read_scan, check_scan):
        fn(folder)
    got = read_scan(folder)
    np.testing.assert_array_equal(got.array, want.array)
    np.testing.assert_allclose(got.affine, want.affine)
    assert got.is_hu and got.meta["files"][0] == f"ct.dcm#{int(np.flatnonzero(order == 0)[0]) + 1}"
    assert check_scan(folder).n_slices == 5 == count_slices(folder)

    # per-frame rescale overrides the shared one
    scaled = tmp_path / "scaled"
    scaled.mkdir()
    write_enhanced_ct(scaled / "ct.dcm", stored, zs, slopes=[1.0, 2.0, 1.0, 1.0, 1.0])
    v = read_scan(scaled)
    assert v.array[1, 1, 1] == 2 * 1034 - 1024 and v.array[2, 1, 1] == 20

    # without per-frame positions, and with a frame missing: errors naming the file
    flat = tmp_path / "flat"
    flat.mkdir()
    write_enhanced_ct(flat / "ct.dcm", stored, zs, per_frame=False)
    with pytest.raises(DataError, match=r"ct\.dcm: multi-frame DICOM \(5 frames\) without a per-frame"):
        read_scan(flat)
    gap = tmp_path / "gap"
    gap.mkdir()
    write_enhanced_ct(gap / "ct.dcm", stored[[0, 1, 3, 4]], [zs[k] for k in (0, 1, 3, 4)])
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=r"ct\.dcm: 1 slice\(s\) missing between ct\.dcm frame 2 and "
                           r"ct\.dcm frame 3"):
            fn(gap)


def test_dicom_errors_name_the_file(tmp_path):
    px = np.zeros((4, 4), np.uint16)
    mixed = tmp_path / "mixed"
    write_series(mixed, n=3)
    write_ct_slice(mixed / "other.dcm", px, ipp=(0, 0, 99), series_uid="9.9.9")
    import pydicom

    ds = pydicom.dcmread(mixed / "other.dcm")
    ds.SeriesNumber, ds.SeriesDescription = 502, "Dose Report"
    ds.save_as(mixed / "other.dcm")
    with pytest.raises(DataError, match=r"other\.dcm: 2 series mixed in one folder \(1\.2\.3\.4\.5 "
                       r"\(3 files\); 9\.9\.9 \(1 files, #502 'Dose Report'\)\)"):
        read_scan(mixed)

    dup = tmp_path / "dup"
    write_series(dup, n=3)
    write_ct_slice(dup / "zz_dup.dcm", np.zeros((6, 7), np.uint16), ipp=(-10, -20, -50.0))
    with pytest.raises(DataError, match="duplicate slice position"):
        read_scan(dup)

    size = tmp_path / "size"
    write_series(size, n=4)
    write_ct_slice(size / "odd.dcm", np.zeros((5, 5), np.uint16), ipp=(-10, -20, 100.0))
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=r"odd\.dcm.*\(5, 5\).*\(6, 7\)"):
            fn(size)

    broken = tmp_path / "broken"
    write_series(broken, n=3)
    (broken / "bad.dcm").write_bytes(b"\x01\x02garbage" * 50)
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=r"bad\.dcm"):
            fn(broken)

    zero = tmp_path / "zero"
    write_series(zero, n=3)
    (zero / "empty.dcm").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.dcm.*0 bytes"):
        read_scan(zero)

    trunc = tmp_path / "trunc"
    write_series(trunc, n=3)
    victim = sorted(trunc.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-20])
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=victim.name):
            fn(trunc)

    one = tmp_path / "one"
    write_series(one, n=1)
    with pytest.raises(DataError, match="at least 2 slices"):
        read_scan(one)
    with pytest.raises(DataError, match="single DICOM file"):
        detect_format(next(one.iterdir()))


def test_dicom_missing_or_irregular_slices_are_refused_naming_the_neighbours(tmp_path):
    folder, zs = write_series(tmp_path / "gap", n=7, dz=2.5)
    by_z = {}
    for f in folder.iterdir():
        by_z[read_scan_header_z(f)] = f
    by_z.pop(zs[3]).unlink()  # the slice at -42.5 mm
    below, above = by_z[zs[2]].name, by_z[zs[4]].name
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=rf"{above}: 1 slice\(s\) missing between {below}"
                           r" and this file: slice step 5 mm, the series' step is 2.5 mm"):
            fn(folder)

    # ordered by InstanceNumber alone (no position, no location): a skipped number
    inst = tmp_path / "inst"
    inst.mkdir()
    for k in (1, 2, 3, 5, 6):
        write_ct_slice(inst / f"s{k}.dcm", np.zeros((6, 7), np.uint16), ipp=None, instance=k)
    with pytest.raises(
            DataError, match=r"s5\.dcm: 1 slice\(s\) missing between s3\.dcm.*InstanceNumber"):
        read_scan(inst)

    # spacing off by a fraction, not a multiple: uneven
    odd = tmp_path / "uneven"
    write_series(odd, n=5, dz=2.0)
    write_ct_slice(odd / "late.dcm", np.zeros((6, 7), np.uint16), ipp=(-10.0, -20.0, -41.3))
    with pytest.raises(DataError, match=r"late\.dcm: uneven slice spacing"):
        read_scan(odd)


def read_scan_header_z(path: Path) -> float:
    import pydicom

    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def test_dicom_non_image_objects_warn_and_damaged_images_fail(tmp_path):
    from pydicom.uid import BasicTextSRStorage, CTImageStorage

    def headerless(path: Path, sop: str) -> None:
        ds = dicom_file(path, sop)
        ds.SeriesInstanceUID = "1.2.3.4.5"
        ds.save_as(path, enforce_file_format=True)

    sr = tmp_path / "sr"
    write_series(sr, n=4)
    headerless(sr / "report.dcm", BasicTextSRStorage)
    with pytest.warns(DataWarning, match=r"1 DICOM object\(s\) without an image left out: report\.dcm"):
        v = read_scan(sr)
    assert v.array.shape[0] == 4 and v.meta["ignored"] == ["report.dcm"]

    img = tmp_path / "img"
    write_series(img, n=4)
    headerless(img / "cut.dcm", CTImageStorage)
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=r"cut\.dcm: image object without Rows/Columns"):
            fn(img)


def test_real_jpeg_series_with_a_file_cut_in_its_pixel_sequence_fails(dicom_series, tmp_path):
    """pydicom reads such a file as an empty dataset with a warning: it must not be dropped."""
    import shutil

    folder = tmp_path / "series"
    shutil.copytree(dicom_series, folder)
    victim = sorted(folder.iterdir())[len(list(folder.iterdir())) // 2]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=rf"{victim.name}: .*truncated"):
            fn(folder)


# --------------------------------------------------------------------------- NIfTI


def test_nifti_axis_order_and_affine_round_trip(tmp_path):
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7) - 1000  # x, y, z
    aff = np.diag([0.7, 0.8, 2.5, 1.0])
    aff[:3, 3] = [-100, -120, 40]
    for name in ("a.nii", "a.nii.gz"):
        p = write_nifti(tmp_path / name, data, aff)
        v = read_scan(p)
        assert detect_format(p) == "nifti"
        assert v.shape == (7, 6, 5)
        assert v.array[3, 2, 1] == data[1, 2, 3]
        assert np.array_equal(v.affine, nib.load(str(p)).affine)  # the file's, unchanged
        assert np.allclose(v.affine, aff)  # (stored as float32 in the header)
        assert np.allclose(v.spacing, (2.5, 0.8, 0.7))
        assert v.is_hu  # min -1000 <= -500
        assert count_slices(p, "nifti") == 7 and check_scan(p).n_slices == 7
        back = nib.Nifti1Image(v.array.transpose(2, 1, 0), v.affine)
        assert np.array_equal(back.get_fdata(), data)
    v = read_scan(write_nifti(tmp_path / "mr.nii.gz", np.ones((3, 4, 5), np.float32)))
    assert not v.is_hu


def test_nifti_4d_and_bad_files(tmp_path):
    v = read_scan(write_nifti(tmp_path / "s.nii.gz", np.zeros((3, 4, 5, 1), np.float32)))
    assert v.shape == (5, 4, 3)
    with pytest.raises(DataError, match=r"four\.nii\.gz.*3D"):
        read_scan(write_nifti(tmp_path / "four.nii.gz", np.zeros((3, 4, 5, 2), np.float32)))
    data = np.zeros((3, 4, 5), np.float32)
    data[1, 1, 1] = np.inf
    p = write_nifti(tmp_path / "inf.nii.gz", data)
    for fn in (read_scan, check_scan):
        with pytest.raises(DataError, match=r"inf\.nii\.gz.*NaN/inf"):
            fn(p)
    with pytest.raises(DataError, match=r"flat\.nii.*at least 2 slices"):
        read_scan(write_nifti(tmp_path / "flat.nii", np.zeros((3, 4, 1), np.int16)))
    (tmp_path / "zero.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.nii\.gz.*0 bytes"):
        read_scan(tmp_path / "zero.nii.gz")
    big = np.random.default_rng(0).integers(-1000, 1000, (20, 20, 20)).astype(np.int16)
    raw = gzip.compress(write_nifti(tmp_path / "t.nii", big).read_bytes())
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"trunc\.nii\.gz"):
        read_scan(tmp_path / "trunc.nii.gz")
    full = (tmp_path / "t.nii").read_bytes()
    (tmp_path / "short.nii").write_bytes(full[:-100])
    with pytest.raises(DataError, match=r"short\.nii.*truncated"):
        check_scan(tmp_path / "short.nii")


# --------------------------------------------------------------------------- npz


def test_npz_item_syntax_and_cache(tmp_path):
    from volnas.data.readers.npz import _npz_cached

    p = write_npz(tmp_path / "toy.npz")
    splits = load_npz_split(p)
    assert {k: v[0].shape[0] for k, v in splits.items()} == {"train": 6, "val": 2, "test": 3}
    assert splits["val"][1].tolist() == [0, 1]
    v = read_scan(f"{p}#val/1")
    assert detect_format(f"{p}#val/1") == "npz"
    assert v.array.dtype == np.float32 and v.shape == (4, 5, 6)
    assert np.array_equal(v.array, splits["val"][0][1]) and v.meta["label"] == 1
    hits = _npz_cached.cache_info().hits
    for i in range(6):
        read_scan(f"{p}#train/{i}")
    assert _npz_cached.cache_info().hits >= hits + 6
    assert count_slices(f"{p}#test/0") == 4
    with pytest.raises(DataError, match="out of range"):
        read_scan(f"{p}#train/6")
    with pytest.raises(DataError, match="unknown split"):
        read_scan(f"{p}#dev/0")
    with pytest.raises(DataError, match="#<split>/<index>"):
        read_scan(p)
    q = write_npz(tmp_path / "nokey.npz", drop="val_labels")
    with pytest.raises(DataError, match=r"nokey\.npz.*val_labels"):
        load_npz_split(q)


def test_registry_and_detection(tmp_path):
    assert set(READERS) == {"dicom", "nifti", "slices", "npz"}
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(DataError, match="unknown scan format"):
        detect_format(tmp_path / "x.bin")
    with pytest.raises(DataError, match="no such"):
        read_scan(tmp_path / "missing")
    with pytest.raises(DataError, match="unknown format"):
        read_scan(tmp_path, "jpeg2000")


# --------------------------------------------------------------------------- real data


def test_a_study_folder_points_to_its_series(tmp_path):
    write_series(tmp_path / "study" / "series_2", n=3)
    write_series(tmp_path / "study" / "series_1", n=3)
    with pytest.raises(DataError, match=r"study: folder holds no .*2 subfolder\(s\) "
                       r"\(series_1, series_2\): pass each scan's own folder"):
        read_scan(tmp_path / "study")
    assert read_scan(tmp_path / "study" / "series_1").shape == (3, 6, 7)


def test_real_dicom_series(dicom_series):
    import pydicom

    t = time.perf_counter()
    v = read_scan(dicom_series)
    took = time.perf_counter() - t
    assert isinstance(v, Volume)
    assert v.shape == (154, 512, 512) and v.array.dtype == np.float32
    assert v.array.min() == -1024 and v.is_hu
    assert v.meta["transfer_syntax"] == "1.2.840.10008.1.2.4.70"
    z = np.array([(v.affine @ [0, 0, d, 1])[2] for d in range(v.shape[0])])
    assert (np.diff(z) > 0).all() and np.allclose(np.diff(z), 2.0)
    first = pydicom.dcmread(dicom_series / v.meta["files"][0], stop_before_pixels=True)
    assert np.isclose(z[0], float(first.ImagePositionPatient[2]))
    assert v.meta["files"] != sorted(v.meta["files"])  # names lie; positions rule
    assert took < 30, f"reading 154 JPEG-lossless slices took {took:.1f} s"
    assert count_slices(dicom_series) == 154
    assert check_scan(dicom_series).patient_id == v.meta["patient_id"]


def test_real_medmnist_npz(adrenal_npz):
    splits = load_npz_split(adrenal_npz)
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 1188, "val": 98, "test": 298}
    v = read_scan(f"{adrenal_npz}#test/0")
    assert v.shape == (28, 28, 28) and v.array.max() <= 255
