"""benchmarks/budget_use.py: the share of its budget a run used, from what the run wrote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


def _script():  # noqa: ANN202
    script = Path(__file__).parents[2] / "benchmarks" / "budget_use.py"
    spec = importlib.util.spec_from_file_location("budget_use", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(folder: Path, seconds: list[float], info: dict, metrics: dict) -> None:
    folder.mkdir(parents=True)
    rows = "".join(f"{i},{s}\n" for i, s in enumerate(seconds, 1))
    (folder / "history.csv").write_text("epoch,seconds\n" + rows)
    (folder / "run.json").write_text(json.dumps(info))
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_budget_use_reads_training_and_search_runs(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    mod = _script()
    _run(tmp_path / "train", [100.0, 100.0, 40.0],
         {"time_budget": {"seconds": 600.0, "epoch_seconds_estimate": 120.0},
          "fill_plan": {"epochs": 3, "last_epoch_batches": 30, "batches_per_epoch": 75}},
         {"run_seconds": 570.0})
    _run(tmp_path / "search" / "final", [50.0], {"fill_plan": {"epochs": 1}}, {})
    (tmp_path / "search" / "search").mkdir()
    (tmp_path / "search" / "search" / "budget.json").write_text(json.dumps(
        {"total_seconds": 600.0, "spent_seconds": {"probes": 200.0, "retrain": 200.0}}))
    train, search = mod.budget_row(tmp_path / "train"), mod.budget_row(tmp_path / "search")
    assert train["share"] == pytest.approx(0.95) and train["last_cut"] == 30
    assert (train["epochs_run"], train["epochs_planned"], train["epoch1"]) == (3, 3, 100.0)
    assert search["share"] == pytest.approx(400 / 600) and search["estimate"] is None
    assert mod.main([str(tmp_path / "train"), str(tmp_path / "search")]) == 0
    out = capsys.readouterr().out
    assert "30 of 75 batches" in out and "66.7 (out)" in out
    assert "1 of 2 runs within 10 % of their budget" in out


def test_budget_use_marks_a_whole_epoch_estimate_against_a_cut_first_epoch(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mod = _script()
    _run(tmp_path / "mc3", [236.0],
         {"time_budget": {"seconds": 600.0, "epoch_seconds_estimate": 649.0,
                          "first_epoch_batches": 20},
          "fill_plan": {"epochs": 1, "last_epoch_batches": 20, "batches_per_epoch": 74}},
         {"run_seconds": 377.0})
    # a run from before the cut was kept in fill_plan, and one with no re-plan at all
    _run(tmp_path / "old", [236.0],
         {"time_budget": {"seconds": 600.0, "epoch_seconds_estimate": 386.0,
                          "first_epoch_batches": 73}}, {"run_seconds": 522.0})
    assert mod.budget_row(tmp_path / "mc3")["last_cut"] == 20
    assert mod.budget_row(tmp_path / "old")["last_cut"] == 73
    assert mod.main([str(tmp_path / "mc3"), str(tmp_path / "old")]) == 0
    out = capsys.readouterr().out
    assert "649 / 236 (20 of 74 batches)" in out and "62.8 (out)" in out
    assert "| 73 batches | 386 / 236 (73 batches) |" in out and "None" not in out
