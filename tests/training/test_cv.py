"""`volnas cv`: folds of the training split grouped by patient, every training scan predicted
once by the fold that held it out, the validation and test splits never read, resumable."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from volnas.cli.main import app
from volnas.data.dataset import DataSource, open_source
from volnas.data.manifest import ManifestRow
from volnas.data.synth import synthesize
from volnas.training import cv as cv_module
from volnas.training.config import TrainConfig
from volnas.training.cv import run_cv
from volnas.training.metrics import compute_metrics
from volnas.training.run import run_training

runner = CliRunner()


def _source() -> DataSource:
    rows = []
    for p in range(40):  # 40 patients of 1-3 scans, a third of them positive
        label = "covid" if p % 3 == 0 else "normal"
        for k in range(1 + p % 3):
            split = "test" if p >= 34 else ("val" if p >= 30 else "train")
            rows.append(ManifestRow(f"p{p}-s{k}", f"/x/p{p}-{k}.nii", "nifti", label, f"p{p}",
                                    8, split))
    return DataSource(rows, ["normal", "covid"], "covid", Path("/x/manifest.csv"))


def test_folds_split_the_training_patients_once_each_stratified() -> None:
    source = _source()
    train_ids = {r.scan_id for r in source.split("train")}
    held: list[str] = []
    for index in range(3):
        fold = source.fold(3, index, seed=5)
        assert {r.scan_id for r in fold.rows} == train_ids  # no val or test scan in any fold
        val = [r for r in fold.rows if r.split == "val"]
        train_patients = {r.patient_id for r in fold.rows if r.split == "train"}
        assert not train_patients & {r.patient_id for r in val}  # a patient is on one side
        # stratified: each held-out fold has positives, about a third of the scans
        assert Counter(r.label for r in val)["covid"] >= 2
        held += [r.scan_id for r in val]
    assert sorted(held) == sorted(train_ids)  # each training scan held out exactly once
    # the folds depend on the seed only, not on the order of the rows
    shuffled = DataSource(source.rows[::-1], source.class_names, "covid", source.origin)
    assert ({r.scan_id for r in shuffled.fold(3, 1, 5).rows if r.split == "val"}
            == {r.scan_id for r in source.fold(3, 1, 5).rows if r.split == "val"})
    with pytest.raises(ValueError, match="fold 3 of 3"):
        source.fold(3, 3)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, tiny_genotype) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("cv")
    res = synthesize(root / "d", scans=36, fmt="npz", classes=2, shape=(8, 16, 16), seed=3)
    return next(res.out.glob("*.npz")), tiny_genotype(root / "g.json")


def _cfg(data: tuple[Path, str], **kw: object) -> TrainConfig:
    return TrainConfig(data=str(data[0]), model=data[1], epochs=1, batch_size=4, device="cpu",
                       preprocess={"slices": 8, "size": (16, 16)}, tta="none", **({"seed": 1} | kw))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _one_thread() -> None:
    torch.set_num_threads(1)


def test_cv_predicts_every_training_scan_once_and_never_reads_val_or_test(
        data: tuple[Path, str], tmp_path: Path) -> None:
    _one_thread()
    out = tmp_path / "cv"
    result = runner.invoke(app, ["cv", "--data", str(data[0]), "--model", data[1], "--out",
                                 str(out), "--folds", "3", "--epochs", "1", "--batch-size", "4",
                                 "--slices", "8", "--size", "16x16", "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    source = open_source(data[0])
    train = [r.scan_id for r in source.split("train")]
    others = {r.scan_id for r in source.rows} - set(train)
    oof = _rows(out / "predictions_oof.csv")
    assert [r["scan_id"] for r in oof] == train  # every training scan once, in split order
    assert not others & {r["scan_id"] for r in oof}
    for k in (1, 2, 3):  # a fold is a run with no test, predicting its held-out scans
        fold = out / f"fold{k}"
        assert not (fold / "metrics.json").exists() and not (fold / "predictions_test.csv").exists()
        held = {r["scan_id"] for r in _rows(fold / "predictions_fold.csv")}
        assert held == {r["scan_id"] for r in oof if r["fold"] == str(k)}
        assert json.loads((fold / "run.json").read_text())["n_val"] == len(held)
    summary = json.loads((out / "cv.json").read_text())
    classes = source.class_names
    y = np.array([classes.index(r["label"]) for r in oof])
    p = np.array([[float(r[f"p_{c}"]) for c in classes] for r in oof])
    assert summary["oof"]["auc"] == pytest.approx(compute_metrics(y, p, classes)["auc"])
    assert summary["oof"]["n_scans"] == len(train) and summary["folds"] == 3
    assert len(summary["fold_auc"]) == 3 and summary["oof"]["params"] > 0
    lo, hi = summary["oof"]["ci"]["auc"]
    assert lo <= summary["oof"]["auc"] <= hi
    # an existing folder is never overwritten
    again = runner.invoke(app, ["cv", "--data", str(data[0]), "--model", data[1], "--out",
                                str(out), "--epochs", "1"])
    assert again.exit_code == 2 and "already holds a run" in again.output


def test_an_interrupted_cv_resumes_to_the_same_predictions(
        data: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _one_thread()
    whole = run_cv(_cfg(data), tmp_path / "whole", 2)
    calls = []

    def stop_on_fold_2(cfg: TrainConfig, run_dir: Path, **kw: object) -> dict:
        calls.append(run_dir.name)
        if run_dir.name == "fold2":
            raise KeyboardInterrupt
        return run_training(cfg, run_dir, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cv_module, "run_training", stop_on_fold_2)
    with pytest.raises(KeyboardInterrupt):
        run_cv(_cfg(data), tmp_path / "cut", 2)
    first = (tmp_path / "cut" / "fold1" / "predictions_fold.csv").stat().st_mtime_ns
    monkeypatch.setattr(cv_module, "run_training", run_training)
    with pytest.raises(ValueError, match="folds 7 given at resume"):
        run_cv(_cfg(data), tmp_path / "cut", 7, resume=True)
    resumed = run_cv(_cfg(data, seed=99), tmp_path / "cut", resume=True)  # saved settings win
    assert (tmp_path / "cut" / "fold1" / "predictions_fold.csv").stat().st_mtime_ns == first
    assert resumed["folds"] == 2 and resumed["seed"] == 1
    assert _rows(tmp_path / "cut" / "predictions_oof.csv") == \
        _rows(tmp_path / "whole" / "predictions_oof.csv")
    assert resumed["oof"]["auc"] == whole["oof"]["auc"]
    # CV folders of the same folds pair up scan by scan in the paired comparison
    script = Path(__file__).parents[2] / "benchmarks" / "paired_compare.py"
    done = subprocess.run([sys.executable, str(script), f"a={tmp_path / 'whole'}",
                           f"b={tmp_path / 'cut'}"], capture_output=True, text=True, check=True)
    assert "| b | 1 |" in done.stdout and "+0.000 (+0.000 to +0.000)" in done.stdout
    assert "CV held-out AUC" in done.stdout


def test_a_fold_is_refused_a_test_or_early_stopping(data: tuple[Path, str], tmp_path: Path) -> None:
    fold = {"folds": 2, "index": 0}
    with pytest.raises(ValueError, match="no test split"):
        run_training(_cfg(data, cv_fold=fold), tmp_path / "a")
    with pytest.raises(ValueError, match="early stopping"):
        run_training(_cfg(data, cv_fold=fold, patience=2), tmp_path / "b", test=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="fold index 2 of 2"):
        TrainConfig(cv_fold={"folds": 2, "index": 2})
