"""One rule per concept: the positive class, the patient splitter, SCAN arguments, the
validation score, and the phantom / writers split of the synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from rich.console import Console

from volnas.data.classes import positive_class as choose_positive_class
from volnas.data.index import build_index
from volnas.data.manifest import ManifestRow, read_manifest, write_manifest
from volnas.data.volume import DataError
from volnas.training.metrics import compute_metrics, resolve_positive_class, select_metric

# ---- 1. one positive-class rule -------------------------------------------------------------

POSITIVE_TABLE = [
    (["abnormal", "normal"], "abnormal"),
    (["normal", "covid"], "covid"),
    (["CP", "NCP", "Normal"], "NCP"),
    (["a", "b"], "b"),
    (["healthy", "sick"], "sick"),
    (["Non-COVID", "pneumonia"], "pneumonia"),
    (["COVID-19", "normal"], "COVID-19"),
]


@pytest.mark.parametrize(("classes", "expected"), POSITIVE_TABLE)
def test_index_and_metrics_choose_the_same_positive_class(classes, expected) -> None:
    assert choose_positive_class(classes) == expected  # the manifest's choice
    assert classes[resolve_positive_class(classes)] == expected  # the metrics' choice
    k = len(classes)
    probs = np.eye(k)[np.arange(2 * k) % k]
    m = compute_metrics(np.arange(2 * k) % k, probs, classes)
    assert m["positive_class"] == expected and m["positive_index"] == classes.index(expected)


def test_given_positive_class_wins_and_is_checked_in_both() -> None:
    assert choose_positive_class(["abnormal", "normal"], "normal") == "normal"
    assert resolve_positive_class(["abnormal", "normal"], "normal") == 1
    for call in (choose_positive_class, resolve_positive_class):
        with pytest.raises(ValueError, match="positive_class 'x' is not one of"):
            call(["a", "b"], "x")
    from volnas.data.classes import positive_class

    assert positive_class(["abnormal", "normal"]) == "abnormal"
    assert positive_class(["only"]) is None
    with pytest.raises(ValueError, match="at least 2 classes"):
        resolve_positive_class(["only"])


# ---- 2. one patient splitter ------------------------------------------------------------------


def _rows(n_patients: int, labels: tuple[str, ...] = ("normal", "covid")) -> list[ManifestRow]:
    """Patient i has 1 + i % 2 scans, label labels[i % len(labels)]."""
    return [ManifestRow(f"P{i}/s{s}", f"/x/P{i}/s{s}", "nifti", labels[i % len(labels)],
                        f"P{i}", 8, "train")
            for i in range(n_patients) for s in range(1 + i % 2)]


def test_splitter_k_fractions_grouped_stratified_deterministic() -> None:
    from volnas.data.splits import split_patients

    rows = _rows(40, ("a", "b", "c"))
    pids, labels = [r.patient_id for r in rows], [r.label for r in rows]
    where = split_patients(pids, labels, (0.4, 0.3, 0.2, 0.1), seed=5)
    assert set(where) == set(pids) and set(where.values()) == {0, 1, 2, 3}
    for s in range(4):  # every class in every split
        assert {r.label for r in rows if where[r.patient_id] == s} == {"a", "b", "c"}
    n = [sum(where[p] == s for p in pids) for s in range(4)]  # scans per split near target
    assert all(abs(n[s] - f * len(rows)) <= 3 for s, f in enumerate((0.4, 0.3, 0.2, 0.1)))
    order = np.random.default_rng(0).permutation(len(rows))
    assert split_patients([pids[i] for i in order], [labels[i] for i in order],
                          (0.4, 0.3, 0.2, 0.1), seed=5) == where  # order does not matter
    assert split_patients(pids, labels, (0.4, 0.3, 0.2, 0.1), seed=6) != where
    with pytest.raises(ValueError, match=r"2 patient\(s\) cannot fill 3 non-empty splits"):
        split_patients(["p", "q"], ["a", "b"], (0.5, 0.3, 0.2), names=("x", "y", "z"))
    with pytest.raises(ValueError, match="summing to 1"):
        split_patients(pids, labels, (0.5, 0.6))


def test_synthetic_npz_splits_come_from_the_one_splitter(tmp_path: Path) -> None:
    from volnas.data.splits import split_patients
    from volnas.data.synth import SPLIT_FRACTIONS, synthesize

    res = synthesize(tmp_path, scans=12, fmt="npz", shape=(8, 16, 16), seed=2,
                     scans_per_patient=(1, 2))
    patients = res.patients()
    where = split_patients([s.patient_id for s in res.scans], [s.class_name for s in res.scans],
                           [f for _, f in SPLIT_FRACTIONS], 2)
    names = [n for n, _ in SPLIT_FRACTIONS]
    assert {p: names[s] for p, s in where.items()} == {
        p: scans[0].split for p, scans in patients.items()}
    few = synthesize(tmp_path / "few", scans=2, fmt="npz", shape=(8, 16, 16), seed=0,
                     scans_per_patient=(1, 1))  # fewer patients than splits: the largest ones
    assert sorted(s.split for s in few.scans) == ["test", "train"]


def _ids(rows: list[ManifestRow]) -> list[str]:
    return sorted({r.patient_id for r in rows})


def test_new_search_records_its_halves_and_resume_reads_them(tmp_path: Path) -> None:
    from volnas.search.search import HALVES_FILE, search_halves, split_by_patient

    rows = _rows(10)
    w, a = search_halves(tmp_path, rows, seed=3)
    assert (w, a) == split_by_patient(rows, 3)
    assert not set(_ids(w)) & set(_ids(a)) and set(_ids(w) + _ids(a)) == set(_ids(rows))
    for half in (w, a):
        assert {r.label for r in half} == {"normal", "covid"}
    recorded = json.loads((tmp_path / HALVES_FILE).read_text())
    assert recorded == {"weight": _ids(w), "architecture": _ids(a)}
    # a resumed search keeps what is recorded, whatever the splitter would say now
    swapped = {"weight": _ids(a), "architecture": _ids(w)}
    (tmp_path / HALVES_FILE).write_text(json.dumps(swapped))
    w2, a2 = search_halves(tmp_path, rows, seed=3)
    assert (_ids(w2), _ids(a2)) == (_ids(a), _ids(w))
    assert [r.scan_id for r in w2] == [r.scan_id for r in rows if r.patient_id in _ids(a)]
    # a recorded file that does not fit the data is an error naming it
    (tmp_path / HALVES_FILE).write_text(json.dumps({"weight": _ids(w)[1:],
                                                    "architecture": _ids(a)}))
    with pytest.raises(ValueError, match=rf"{HALVES_FILE}: does not match.*neither half"):
        search_halves(tmp_path, rows, seed=3)
    (tmp_path / HALVES_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{HALVES_FILE}: expected an object"):
        search_halves(tmp_path, rows, seed=3)


def test_search_started_before_halves_were_recorded_resumes_on_its_old_halves(
    tmp_path: Path,
) -> None:
    from volnas.search.search import HALVES_FILE, search_halves, split_by_patient

    rows = _rows(10)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "last.json").write_text("{}")  # it has trained
    w, a = search_halves(tmp_path, rows, seed=3)
    # what the splitter of those versions gave for these rows and seed
    old = (["P0", "P3", "P4", "P5", "P6", "P9"], ["P1", "P2", "P7", "P8"])
    assert (_ids(w), _ids(a)) == old
    assert (_ids(w), _ids(a)) != tuple(map(_ids, split_by_patient(rows, 3)))  # a real change
    assert json.loads((tmp_path / HALVES_FILE).read_text()) == dict(
        zip(("weight", "architecture"), old, strict=True))
    assert tuple(map(_ids, search_halves(tmp_path, rows, seed=3))) == old


# ---- 3. one SCAN-argument resolver ------------------------------------------------------------


@pytest.fixture(scope="module")
def scan_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from volnas.data.synth import synthesize

    root = tmp_path_factory.mktemp("scans")
    nifti = synthesize(root / "nifti", scans=3, fmt="nifti", shape=(8, 16, 16), seed=1,
                       scans_per_patient=(1, 1))
    synthesize(root / "npz", scans=4, fmt="npz", shape=(8, 16, 16), seed=1,
               scans_per_patient=(1, 1))
    manifest = root / "manifest.csv"
    write_manifest(build_index(nifti.out, split=(0.34, 0.33, 0.33), seed=0), manifest)
    plain = root / "plain.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), np.eye(4)), str(plain))
    return {"root": root, "manifest": manifest, "npz": root / "npz" / "synth.npz",
            "plain": plain}


def _arguments(f: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(argument, None for a scan / the text its error must hold)."""
    row = read_manifest(f["manifest"])[0]
    return [
        (str(f["plain"]), None),
        (f"{f['npz']}#train/0", None),
        (f"{f['manifest']}#{row.scan_id}", None),
        (str(f["root"] / "nope.nii.gz"), "nope.nii.gz: no such file or folder"),
        (f"{f['manifest']}#no_such_scan", "no scan with scan_id 'no_such_scan'"),
        (f"{f['root'] / 'gone.npz'}#train/0", "gone.npz: no such file"),
        (f"{f['npz']}#train", "bad npz item 'train'"),
    ]


def test_predict_and_explain_resolve_the_same_arguments_alike(scan_files) -> None:
    from volnas.deploy.predict import expand_scans
    from volnas.explain.api import resolve_scan

    for arg, error in _arguments(scan_files):
        items, failures = expand_scans([arg])
        if error is None:
            ref = resolve_scan(arg)
            assert not failures and len(items) == 1, arg
            got = items[0]
            assert (got.path, got.fmt, got.label) == (ref.path, ref.fmt, ref.label), arg
            assert got.arg == ref.arg == arg
            assert got.name == (ref.scan_id if "#" in arg and ".csv" in arg else arg)
        else:
            with pytest.raises(DataError) as err:
                resolve_scan(arg)
            assert error in str(err.value), arg
            assert not items and len(failures) == 1, arg
            assert failures[0].scan == arg and error in f"{failures[0].path}: {failures[0].reason}"
    row = read_manifest(scan_files["manifest"])[0]
    assert resolve_scan(f"{scan_files['manifest']}#{row.scan_id}").label == row.label
    assert resolve_scan(f"{scan_files['npz']}#train/0").scan_id == "synth_train_0"
    assert resolve_scan(str(scan_files["plain"])).scan_id == "plain"


def test_predict_expands_a_manifest_into_arguments_explain_resolves(scan_files) -> None:
    from volnas.deploy.predict import expand_scans
    from volnas.explain.api import resolve_scan

    for source in (scan_files["manifest"], scan_files["npz"]):
        items, failures = expand_scans([source])
        assert not failures and len(items) >= 3
        for item in items:
            ref = resolve_scan(item.arg)
            assert (ref.path, ref.fmt) == (item.path, item.fmt)
            if source.suffix == ".csv":
                assert ref.label == item.label


# ---- 4. the validation score, computed once ---------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "values", "expected"),
    [
        ("auc", {"auc": 0.75, "loss": 0.5}, 0.75),
        ("loss", {"auc": 0.75, "loss": 0.5}, -0.5),
        ("loss", {"auc": 0.75, "loss": math.nan}, -math.inf),  # a diverged run scores lowest
        ("loss", {"auc": 0.75, "loss": None}, -math.inf),
        ("auc", {"auc": None, "loss": 0.5}, -math.inf),
    ],
)
def test_probe_and_trainer_score_with_one_function(tmp_path, monkeypatch, metric, values,
                                                   expected) -> None:
    from volnas.models.genotype import Genotype
    from volnas.models.spaces import layer_specs
    from volnas.search import evaluation
    from volnas.search.evaluation import probe_candidates
    from volnas.search.run import load_search_config
    from volnas.training.trainer import Trainer

    best = {"accuracy": 0.5, "f1": 0.5, **values}
    trainer_like = SimpleNamespace(cfg=SimpleNamespace(select_metric=metric))
    assert Trainer._score(trainer_like, best) == expected == select_metric(best, metric)

    cfg = load_search_config(None, {"data": "unused.csv", "slices": 8, "size": (16, 16),
                                    "select_metric": metric})
    geno = Genotype(cfg.space, [s.candidates[0] for s in layer_specs(cfg.space)])
    monkeypatch.setattr(evaluation, "run_training", lambda *a, **k: dict(best))
    cand = {"genotype": geno.to_string(), "epoch": 1, "score": 0.0, "params": 1}
    probes = probe_candidates(cfg, [cand], tmp_path, 2, Console(file=None, quiet=True))
    assert probes[0]["probe_score"] == expected


# ---- 5. the phantom and the writers -----------------------------------------------------------


def test_synth_keeps_its_public_names_and_the_phantom_has_no_writers() -> None:
    from volnas.data import phantom, synth

    for name in ("synthesize", "FORMATS", "DIFFICULTIES", "CLASS_NAMES", "HU_OFFSET",
                 "CT_BURDEN", "WINDOW", "SPLIT_FRACTIONS", "SynthResult", "SynthScan",
                 "Anatomy", "make_volume", "random_anatomy", "scan_affine", "scan_spacing"):
        assert hasattr(synth, name), name
    assert synth.make_volume is phantom.make_volume and synth.DIFFICULTIES is phantom.DIFFICULTIES
    assert not any(n.startswith("_write") or n == "synthesize" for n in vars(phantom))
    rng = np.random.default_rng(0)
    hu, mask = phantom.make_volume(rng, "covid", (8, 24, 24))
    assert hu.shape == mask.shape == (8, 24, 24) and mask.any()
    assert hu.min() >= -synth.HU_OFFSET  # every value fits the writers' uint16 storage
