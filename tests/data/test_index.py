"""Indexer: layouts -> manifest rows, patient-grouped stratified splits, manifest I/O."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from volnas.data.classes import positive_class as choose_positive_class
from volnas.data.index import assign_splits, build_index
from volnas.data.manifest import (
    ManifestRow,
    class_names,
    read_manifest,
    read_manifest_info,
    summary_table,
    write_manifest,
)
from volnas.data.volume import DataError

# --------------------------------------------------------------------------- data makers


def png_scan(folder: Path, n: int = 3, shape: tuple[int, int] = (4, 5), value: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full(shape, value + i, np.uint8)).save(folder / f"{i + 1}.png")
    return folder


def slice_tree(root: Path, patients: dict[str, int], scans: int = 1) -> Path:
    """root/<class>/<patient>/<scan>/ with ``patients[class]`` patients per class."""
    for cls, k in patients.items():
        for p in range(k):
            for s in range(scans):
                png_scan(root / cls / f"{cls}_p{p:02d}" / f"scan{s}")
    return root


def ct_series(folder: Path, n: int = 3, patient_id: str = "PID", uid: str = "1.2.3") -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.SeriesInstanceUID = "CT", patient_id, uid
        ds.ImagePositionPatient = [0.0, 0.0, float(-k)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.Rows, ds.Columns = 4, 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.full((4, 4), 1000 + k, np.uint16).tobytes()
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    return folder


def nifti(path: Path, z: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((4, 5, z), -1000, np.int16), np.eye(4)), str(path))
    return path


def check_grouping(rows: list[ManifestRow]) -> None:
    where = defaultdict(set)
    for r in rows:
        where[r.patient_id].add(r.split)
    assert all(len(s) == 1 for s in where.values()), "a patient is in two splits"


# --------------------------------------------------------------------------- layouts


def test_slice_folders_split_by_patient_and_stratified(tmp_path):
    root = slice_tree(tmp_path / "data", {"NCP": 4, "CP": 4, "Normal": 4}, scans=2)
    seen = set()
    for seed in range(8):
        res = build_index(root, seed=seed)
        assert len(res.rows) == 24 and res.layout == "slices"
        check_grouping(res.rows)
        by = Counter((r.label, r.split) for r in res.rows)
        for cls in ("NCP", "CP", "Normal"):
            for split in ("train", "val", "test"):
                assert by[cls, split] >= 2, (seed, cls, split)  # every class in every split
            assert by[cls, "train"] >= by[cls, "test"] >= by[cls, "val"]
        seen.add(tuple(r.split for r in res.rows))
        again = build_index(root, seed=seed)
        assert [r.split for r in again.rows] == [r.split for r in res.rows]  # deterministic
    assert len(seen) > 1  # the seed matters
    r0 = res.rows[0]
    assert r0.scan_id.count("/") == 2 and r0.format == "slices" and r0.n_slices == 3
    assert Path(r0.path).is_absolute()
    assert res.classes == ["CP", "NCP", "Normal"] and res.positive_class == "NCP"


def test_larger_imbalanced_split_fractions(tmp_path):
    rows = [
        ManifestRow(
            f"s{i}", f"/x/{i}", "nifti", "covid" if i % 4 else "normal", f"p{i // 2}", 9, ""
        )
        for i in range(400)
    ]
    for seed in (0, 1, 2):
        assign_splits(rows, (0.7, 0.1, 0.2), seed)
        check_grouping(rows)
        n = Counter(r.split for r in rows)
        assert abs(n["train"] - 280) <= 4 and abs(n["val"] - 40) <= 4 and abs(n["test"] - 80) <= 4
        pos = Counter(r.split for r in rows if r.label == "covid")
        assert abs(pos["val"] / n["val"] - 0.75) < 0.06


def test_same_patient_under_two_classes_stays_together(tmp_path):
    root = slice_tree(tmp_path / "d", {"NCP": 5, "Normal": 5})
    png_scan(root / "Normal" / "NCP_p00" / "follow_up")  # NCP_p00 also has a Normal scan
    for seed in range(5):
        res = build_index(root, seed=seed)
        check_grouping(res.rows)
        assert len({r.split for r in res.rows if r.patient_id == "NCP_p00"}) == 1


def test_too_few_patients_is_a_clear_error(tmp_path):
    root = slice_tree(tmp_path / "d", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="2 patient.*3 non-empty splits"):
        build_index(root)
    res = build_index(root, split=(0.5, 0.0, 0.5))
    assert {r.split for r in res.rows} == {"train", "test"}
    with pytest.raises(ValueError, match="sum"):
        build_index(root, split=(0.5, 0.2, 0.5))


def test_nifti_mosmed_class_map_and_patients_csv(tmp_path):
    root = tmp_path / "mosmed"
    for k in range(3):
        for i in range(4):
            nifti(root / f"CT-{k}" / f"study_{k}{i:02d}.nii.gz")
    (root / "patients.csv").write_text("file,patient_id\nstudy_100.nii.gz,PX\nstudy_200,PX\n")
    res = build_index(root)
    assert res.layout == "nifti" and res.classes == ["covid", "normal"]
    assert res.positive_class == "covid"
    labels = {r.scan_id: r.label for r in res.rows}
    assert labels["CT-0/study_000"] == "normal" and labels["CT-2/study_201"] == "covid"
    pids = {r.scan_id: r.patient_id for r in res.rows}
    assert pids["CT-0/study_001"] == "study_001"
    assert pids["CT-1/study_100"] == pids["CT-2/study_200"] == "PX"
    check_grouping(res.rows)
    nifti(root / "CT-1" / "PY" / "visit1.nii.gz")  # root/<class>/<patient>/<study>
    assert {r.patient_id for r in build_index(root).rows if r.scan_id == "CT-1/PY/visit1"} == {"PY"}
    (root / "CT-7").mkdir()
    nifti(root / "CT-7" / "study_700.nii")
    with pytest.raises(DataError, match="CT-7.*unknown class folder"):
        build_index(root)


def test_dicom_layouts_and_patient_id_from_tag(tmp_path):
    root = tmp_path / "dcm"
    for i in range(3):
        ct_series(root / "covid" / f"pat{i}" / "series1", uid=f"1.{i}")
        ct_series(root / "normal" / f"series_{i}", patient_id=f"TAG{i}", uid=f"2.{i}")
    res = build_index(root)
    assert res.layout == "dicom"
    pids = {r.scan_id: r.patient_id for r in res.rows}
    assert pids["covid/pat1/series1"] == "pat1"
    assert pids["normal/series_2"] == "TAG2"  # from the DICOM PatientID tag
    assert all(r.n_slices == 3 for r in res.rows)


def test_real_dicom_series_indexes(dicom_series, tmp_path):
    root = tmp_path / "ctmd"
    (root / "Normal").mkdir(parents=True)
    (root / "Normal" / "normal001").symlink_to(dicom_series, target_is_directory=True)
    for i in range(2):
        ct_series(root / "COVID-19" / f"c{i}", patient_id=f"C{i}", uid=f"3.{i}")
    res = build_index(root, split=(0.34, 0.33, 0.33))
    real = next(r for r in res.rows if r.label == "Normal")
    assert real.n_slices == 154 and real.patient_id == "99C628-ASAD"
    assert res.positive_class == "COVID-19"


def test_medmnist_npz_official_splits(tmp_path, capsys):
    arrays = {}
    for split, k in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = np.zeros((k, 4, 4, 4), np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 2).astype(np.uint8)[:, None]
    np.savez(tmp_path / "toy.npz", **arrays)
    res = build_index(
        tmp_path / "toy.npz", split=(0.5, 0.25, 0.25), class_map={"0": "normal", "1": "lesion"}
    )
    assert any("official splits" in n for n in res.notes)  # a split given is noted, unused
    assert build_index(tmp_path / "toy.npz").notes == []  # opening an npz says nothing
    assert capsys.readouterr().err == ""  # the library never prints; the CLI shows notes
    assert Counter(r.split for r in res.rows) == {"train": 5, "val": 2, "test": 3}
    assert res.rows[1].path.endswith("toy.npz#train/1") and res.rows[1].label == "lesion"
    assert res.positive_class == "lesion" and res.split is None
    assert all(r.patient_id == r.scan_id for r in res.rows)


def test_real_adrenal_npz(adrenal_npz, tmp_path):
    res = build_index(adrenal_npz)
    assert Counter(r.split for r in res.rows) == {"train": 1188, "val": 98, "test": 298}
    assert Counter(r.label for r in res.rows if r.split == "test") == {"0": 229, "1": 69}
    assert res.classes == ["0", "1"] and res.positive_class == "1"
    out = write_manifest(res, tmp_path / "m" / "manifest.csv")
    rows = read_manifest(out)
    assert rows == res.rows


# --------------------------------------------------------------------------- bad input


def test_unknown_class_folders(tmp_path):
    root = slice_tree(tmp_path / "d", {"a": 3, "b": 3})
    (root / "junk").mkdir()
    with pytest.raises(DataError, match=r"junk.*unknown class folder.*no scans"):
        build_index(root)
    res = build_index(root, skip_bad=True)
    assert [Path(s.path).name for s in res.skipped] == ["junk"]
    (root / "junk").rmdir()
    nifti(root / "masks" / "a_p00.nii.gz")  # lesion masks beside the classes: not a class
    assert build_index(root).classes == ["a", "b"]
    with pytest.raises(DataError, match=r"[/\\]b: unknown class folder 'b'"):
        build_index(root, class_map={"a": "covid"})
    res = build_index(root, class_map={"a": "covid", "b": "normal"})
    assert res.classes == ["covid", "normal"]


def _bad_tree(root: Path) -> dict[str, str]:
    """Six good patients per class plus one bad scan of each kind; returns bad name -> kind."""
    slice_tree(root, {"covid": 6, "normal": 6})
    bad = {}
    z = png_scan(root / "covid" / "pz" / "s")
    (z / "9.png").write_bytes(b"")
    bad["9.png"] = "0 bytes"
    t = root / "covid" / "pt" / "s"
    t.mkdir(parents=True)
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    for i in (1, 2):
        Image.fromarray(img).save(t / f"t{i}.png")
    raw = (t / "t2.png").read_bytes()
    (t / "t1.png").write_bytes(raw[: len(raw) // 2])
    bad["t1.png"] = "unreadable"
    m = png_scan(root / "normal" / "pm" / "s")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(m / "7.png")
    bad["7.png"] = "mixed slice sizes"
    png_scan(root / "normal" / "po" / "single", n=1)
    bad["single"] = "at least 2 slices"
    (root / "normal" / "pe" / "emptyscan").mkdir(parents=True)
    bad["emptyscan"] = "empty"
    nan = root / "normal" / "pn" / "s"
    nan.mkdir(parents=True)
    import tifffile

    for i in range(3):
        a = np.zeros((4, 5), np.float32)
        if i == 1:
            a[0, 0] = np.nan
        tifffile.imwrite(nan / f"n{i}.tif", a)
    bad["n1.tif"] = "NaN"
    return bad


def test_bad_scans_raise_or_are_skipped_and_listed(tmp_path):
    root = tmp_path / "d"
    bad = _bad_tree(root)
    with pytest.raises(DataError):
        build_index(root)
    res = build_index(root, skip_bad=True, seed=3)
    assert len(res.rows) == 12
    reasons = " | ".join(f"{s.path}: {s.reason}" for s in res.skipped)
    assert len(res.skipped) == len(bad), reasons
    for name, kind in bad.items():
        hit = [s for s in res.skipped if name in s.reason or s.path.endswith(name)]
        assert len(hit) == 1, f"{name} not reported once in {reasons}"
        assert kind in hit[0].reason, hit[0].reason
    # Each kind alone, without skip_bad: the DataError names the bad file.
    for name, kind in bad.items():
        one = tmp_path / f"only_{name.replace('.', '_')}"
        slice_tree(one, {"covid": 3, "normal": 3})
        src = next(s for s in res.skipped if name in s.reason or s.path.endswith(name))
        scan = Path(src.path)
        import shutil

        shutil.copytree(scan, one / "covid" / "badpatient" / scan.name)
        with pytest.raises(DataError, match=kind) as err:
            build_index(one)
        assert name in str(err.value)
    out = write_manifest(res, tmp_path / "out" / "manifest.csv")
    with open(out.parent / "manifest.skipped.csv", newline="") as fh:
        skipped = list(csv.DictReader(fh))
    assert len(skipped) == len(bad) and set(skipped[0]) == {"path", "reason"}
    info = json.loads((out.parent / "manifest.manifest.json").read_text())
    assert len(info["skipped"]) == len(bad)


def test_full_check_decodes_everything(tmp_path):
    root = slice_tree(tmp_path / "d", {"a": 3, "b": 3})
    res = build_index(root, full_check=True)
    assert len(res.rows) == 6


# --------------------------------------------------------------------------- manifest


def test_manifest_round_trip_and_sidecar(tmp_path):
    root = slice_tree(tmp_path / "data", {"covid": 4, "normal": 4})
    res = build_index(root, seed=5)
    out = write_manifest(res, tmp_path / "runs" / "manifest.csv")
    text = out.read_text()
    assert "../data/covid/" in text and str(tmp_path) not in text  # relative to the manifest
    rows = read_manifest(out)
    assert rows == res.rows  # paths resolved back to the same absolute paths
    info = read_manifest_info(out)
    assert info["classes"] == ["covid", "normal"] and info["positive_class"] == "covid"
    assert info["seed"] == 5 and info["split"] == [0.7, 0.1, 0.2] and info["skipped"] == []
    assert class_names(rows) == ["covid", "normal"]


def test_read_manifest_rejects_bad_rows(tmp_path):
    root = slice_tree(tmp_path / "data", {"covid": 4, "normal": 4})
    out = write_manifest(build_index(root), tmp_path / "manifest.csv")
    lines = out.read_text().splitlines()

    def broken(text: str) -> Path:
        p = tmp_path / "broken.csv"
        p.write_text(text + "\n")
        return p

    with pytest.raises(DataError, match="missing column.*n_slices"):
        read_manifest(
            broken(
                "\n".join(line.rsplit(",", 2)[0] + "," + line.rsplit(",", 1)[1] for line in lines)
            )
        )
    cells = lines[2].split(",")
    cells[5] = "many"
    with pytest.raises(DataError, match=r"broken\.csv line 3.*n_slices"):
        read_manifest(broken("\n".join([*lines[:2], ",".join(cells), *lines[3:]])))
    cells = lines[2].split(",")
    cells[6] = "dev"
    with pytest.raises(DataError, match=r"line 3.*split 'dev'"):
        read_manifest(broken("\n".join([*lines[:2], ",".join(cells), *lines[3:]])))
    first = lines[1].split(",")
    other = "test" if first[6] != "test" else "train"
    leak = ",".join(["leak", *first[1:6], other])
    with pytest.raises(DataError, match=r"line \d+.*patient .* is in split"):
        read_manifest(broken("\n".join([*lines, leak])))
    with pytest.raises(DataError, match="repeats line 2"):
        read_manifest(broken("\n".join([*lines, lines[1]])))


def test_positive_class_rule_and_summary_table(tmp_path):
    assert choose_positive_class(["CP", "NCP", "Normal"]) == "NCP"
    assert choose_positive_class(["COVID-19", "normal"]) == "COVID-19"
    assert choose_positive_class(["abnormal", "normal"]) == "abnormal"
    assert choose_positive_class(["a", "b"]) == "b"
    assert choose_positive_class(["a", "b"], "a") == "a"
    assert class_names(
        [ManifestRow("x", "p", "npz", str(i), "x", 2, "train") for i in (10, 2, 1)]
    ) == [
        "1",
        "2",
        "10",
    ]
    from rich.console import Console

    root = slice_tree(tmp_path / "d", {"covid": 4, "normal": 4})
    res = build_index(root)
    console = Console(record=True, width=100)
    console.print(summary_table(res.rows))
    text = console.export_text()
    assert "covid" in text and "total" in text and "patients" in text
    n = Counter(r.split for r in res.rows)
    total_line = next(line for line in text.splitlines() if line.strip("│ ").startswith("total"))
    assert [int(x) for x in total_line.replace("│", " ").split()[1:]] == [
        n["train"],
        n["val"],
        n["test"],
        8,
    ]


def test_a_dataset_folder_given_as_the_manifest_says_how_to_index_it(tmp_path):
    root = slice_tree(tmp_path / "scans", {"a": 2, "b": 2})
    with pytest.raises(DataError, match=r"scans: a folder, not a manifest: index it first .*"
                       r"`volnas data index .*scans --out scans\.csv`, then pass --data scans\.csv"):
        read_manifest(root)
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
