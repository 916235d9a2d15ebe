"""``volnas benchmark``: every (model, seed) cell, a report that matches the runs, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from volnas.benchmark.markdown import METRICS, fmt_mean_std
from volnas.cli.main import app
from volnas.data.synth import synthesize
from volnas.models.genotype import Genotype
from volnas.models.spaces import layer_specs
from volnas.search.run import search_run_seconds
from volnas.training.rundir import history_seconds

runner = CliRunner()


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench_data")
    res = synthesize(root, scans=24, fmt="npz", classes=2, shape=(8, 16, 16), seed=5)
    return next(res.out.glob("*.npz"))


def tiny_genotype(path: Path) -> Path:
    """A small net of the medpipe space: every searchable layer is 'skip'."""
    specs = layer_specs("medpipe")
    ops = ["skip" if s.kind == "normal" else ("conv_s2" if i < 3 else "conv_s1")
           for i, s in enumerate(specs)]
    Genotype("medpipe", ops).save(path)
    return path


def _invoke(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_benchmark_report_matches_runs_and_resumes(npz_data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLNAS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    tiny = tiny_genotype(tmp_path / "tiny.json")
    config = tmp_path / "bench.yaml"
    config.write_text("augment_search: \"off\"\nlr: 0.003\n")  # a quicker search
    args = ["benchmark", "--data", npz_data, "--models", f"genotype:{tiny}", "--search",
            "medpipe", "--seeds", "2", "--out", out, "--epochs", "1", "--batch-size", "4",
            "--slices", "8", "--size", "16x16", "--search-epochs", "1", "--probe-epochs", "1",
            "--topk", "1", "--config", config, "--device", "cpu"]
    _invoke(*args)
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] and not report["failed"]
    assert any(r["summary"]["op_sensitivity"]["n"] for r in report["rows"])  # exercised below
    assert report["seeds"] == [0, 1]
    assert report["machine"]["cpu_count"] and report["machine"]["torch"]
    assert report["training"]["epochs"] == 1 and report["preprocess"]["slices"] == 8
    assert "volnas benchmark" in report["command"] and "--search medpipe" in report["command"]
    md = (out / "report.md").read_text()
    assert (out / "f1_vs_size.png").stat().st_size > 1000

    files = {"genotype-tiny": "metrics.json", "medpipe": "final/metrics.json"}
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == set(files)
    for name, rel in files.items():
        runs = [json.loads((out / "runs" / name / f"seed{k}" / rel).read_text()) for k in (0, 1)]
        row = rows[name]
        assert [r["seed"] for r in row["runs"]] == [0, 1]
        for r in runs:
            r["f1_weighted"] = r["weighted"]["f1"]
        for key in (*METRICS, "model_size_mb"):
            vals = [r[key] for r in runs if r[key] is not None]
            s = row["summary"][key]
            if not vals:
                assert s["mean"] is None
                continue
            assert s["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
            assert s["std"] == pytest.approx(np.std(vals, ddof=1) if len(vals) > 1 else 0.0,
                                             abs=1e-12)
            assert s["n"] == len(vals)
            if key in METRICS:
                assert fmt_mean_std(s, total=2) in md
        # the validation AUC of the kept checkpoint (what a choice between rows rests on)
        vals = []
        for k, r in enumerate(runs):
            hist = (out / "runs" / name / f"seed{k}" / rel).parent / "history.csv"
            with open(hist, newline="") as f:
                best = [h for h in csv.DictReader(f) if int(h["epoch"]) == r["best_epoch"]]
            vals.append(float(best[-1]["val_auc"]))
            assert row["runs"][k]["val_auc"] == pytest.approx(vals[-1])
        assert row["summary"]["val_auc"]["mean"] == pytest.approx(np.mean(vals))
        # the test split at each run's validation operating point, when it has one
        for key, field in (("op_sensitivity", "sensitivity"), ("op_specificity", "specificity")):
            vals = [(r.get("operating_point") or {}).get(field) for r in runs]
            vals = [v for v in vals if v is not None]
            got = row["summary"][key]
            assert got["n"] == len(vals)
            if vals:
                assert got["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
                assert "sensitivity at val threshold" in md and fmt_mean_std(got, total=2) in md
        if name == "genotype-tiny":
            secs = [r["train_seconds"] for r in runs]
            assert row["input"] == [1, 8, 16, 16] and row["slices"] == 8
            assert f"{np.mean(vals):.2f}" in md  # the size column
        else:
            results = [json.loads((out / "runs" / name / f"seed{k}" / "result.json").read_text())
                       for k in (0, 1)]
            # the search column: everything before the retrain (search epochs and probes)
            secs = [r["total_seconds"] - r["retrain_seconds"] for r in results]
            for k, r in enumerate(results):  # stage times: the histories, summed
                d = out / "runs" / name / f"seed{k}"
                stages = [history_seconds(d / "search"),
                          *(history_seconds(p) for p in sorted((d / "probes").glob("rank*/"))),
                          history_seconds(d / "final")]
                assert r["search_seconds"] == pytest.approx(stages[0])
                assert r["total_seconds"] == pytest.approx(sum(stages))
                assert r["retrain_seconds"] == pytest.approx(stages[-1])
            assert [r["genotype"] for r in row["runs"]] == [r["genotype"] for r in results]
            # how decided each search ended is listed beside its architecture
            for r in results:
                d = r["decision"]
                assert set(d) == ({"architecture"} if r["augment_search"] == "off"
                                  else {"architecture", "augmentation"})
                assert 0 <= d["architecture"]["skip_layers"] <= d["architecture"]["skippable_layers"]
                assert d["architecture"]["skip_layers"] == r["genotype"].count("skip")
                shares = ", ".join(
                    f"{k} entropy {v['entropy_ratio']:.1%} of its start"
                    + (f", {v['skip_layers']}/{v['skippable_layers']} layers skip"
                       if k == "architecture" else "") for k, v in d.items())
                assert f"`{r['genotype']}` ({shares})" in md
        assert row["summary"]["seconds"]["mean"] == pytest.approx(np.mean(secs))

    # Again: every cell is finished, so nothing is trained and no metrics file is rewritten.
    watched = sorted(out.glob("runs/*/seed*/**/*.json")) + sorted(out.glob("runs/*/seed*/*.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in watched}
    again = _invoke(*args)
    assert "4 done, 0 to resume, 0 new" in again
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert json.loads((out / "report.json").read_text())["rows"] == report["rows"]

    # An interrupted cell (no metrics.json yet) is resumed from its checkpoint, not retrained.
    cell = out / "runs" / "genotype-tiny" / "seed1"
    (cell / "metrics.json").unlink()
    again = _invoke(*args)
    assert "3 done, 1 to resume, 0 new" in again and "resumed after epoch 1" in again
    assert json.loads((cell / "metrics.json").read_text())["n_scans"] > 0
    assert len((cell / "history.csv").read_text().strip().splitlines()) == 2  # header + 1 epoch

    # Other settings for the same folder are refused rather than mixed into the table.
    changed = [str(a) for a in args]
    changed[changed.index("--epochs") + 1] = "2"
    res = runner.invoke(app, changed)
    assert res.exit_code == 2 and "other settings" in res.output

    # Cells written before the histories were summed hold the last process's time only: the
    # report takes the times from the histories, not from that JSON.
    result_file = out / "runs" / "medpipe" / "seed0" / "result.json"
    stale = json.loads(result_file.read_text())
    logged = search_run_seconds(result_file.parent)
    result_file.write_text(json.dumps(stale | {"search_seconds": 0.5, "total_seconds": 1.0}))
    _invoke(*args, "--report-only")
    run = next(r for row in json.loads((out / "report.json").read_text())["rows"]
               for r in row["runs"] if r["dir"] == str(result_file.parent))
    # the search column: everything before the retrain (here the search epochs and probes)
    assert run["seconds"] == pytest.approx(logged["search_seconds"] + logged["probe_seconds"])
    assert run["seconds"] == pytest.approx(logged["total_seconds"] - logged["retrain_seconds"])
    assert run["total_seconds"] == pytest.approx(logged["total_seconds"]) and logged["total_seconds"] > 1.0


def test_report_only_and_cells_held_by_another_process(npz_data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    monkeypatch.setenv("VOLNAS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    tiny = tiny_genotype(tmp_path / "tiny.json")
    args = ["benchmark", "--data", npz_data, "--models", f"genotype:{tiny}", "--seeds", "2",
            "--out", out, "--epochs", "1", "--batch-size", "4", "--slices", "8",
            "--size", "16x16", "--device", "cpu"]
    # --report-only trains nothing and says what is missing.
    text = _invoke(*args, "--report-only")
    assert "0 done, 0 to resume, 2 new" in text
    assert not (out / "runs" / "genotype-tiny" / "seed0").exists()
    report = json.loads((out / "report.json").read_text())
    assert not report["complete"] and report["rows"][0]["n_done"] == 0
    assert "Incomplete:** 0 of 2 runs" in (out / "report.md").read_text()

    # Seed 0 is held by "another process": this one runs seed 1 only.
    cells = out / "runs" / "genotype-tiny"
    cells.mkdir(parents=True)
    with open(cells / ".seed0.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        text = _invoke(*args)
    assert "another process is running this cell" in text
    assert not (cells / "seed0").exists() and (cells / "seed1" / "metrics.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert not report["complete"] and [r["seed"] for r in report["rows"][0]["runs"]] == [1]
    metrics = json.loads((cells / "seed1" / "metrics.json").read_text())
    assert report["rows"][0]["runs"][0]["accuracy"] == metrics["accuracy"]


def test_same_data_across_machines(tmp_path: Path) -> None:
    from volnas.benchmark.cells import same_data

    here = tmp_path / "a" / "adrenalmnist3d.npz"
    here.parent.mkdir()
    here.write_bytes(b"x" * 10)
    assert same_data(str(here), str(here))
    assert same_data("/elsewhere/shared/adrenalmnist3d.npz", str(here))  # moved folder
    other = tmp_path / "b" / "adrenalmnist3d.npz"
    other.parent.mkdir()
    other.write_bytes(b"y" * 11)
    assert not same_data(str(other), str(here))  # both here, different files
    assert not same_data("/elsewhere/organmnist3d.npz", str(here))
    assert not same_data(str(here), "/elsewhere/adrenalmnist3d.npz")  # nothing to read now


def test_one_run_has_no_spread() -> None:
    from volnas.benchmark.markdown import fmt_seconds

    assert fmt_mean_std({"mean": 0.82891, "std": 0.0, "n": 1}) == "0.8289"
    assert fmt_mean_std({"mean": 0.8, "std": 0.01, "n": 2}, total=3) == "0.8000 ± 0.0100 (n=2)"
    assert fmt_mean_std({"mean": None, "std": None, "n": 0}) == "n/a"
    assert fmt_seconds({"mean": 600.0, "std": 0.0, "n": 1}) == "10.0 min"
    assert fmt_seconds({"mean": 600.0, "std": 60.0, "n": 3}) == "10.0 ± 1.0 min"


def test_publish_cells_copies_finished_cells_without_weights(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).parents[2] / "benchmarks" / "publish_cells.py"
    spec = importlib.util.spec_from_file_location("publish_cells", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = tmp_path / "bench"
    done = src / "runs" / "resnet3d_18" / "seed0"
    (done / "checkpoint").mkdir(parents=True)
    (done / "metrics.json").write_text("{}")
    (done / "history.csv").write_text("epoch\n1\n")
    (done / "model.safetensors").write_bytes(b"w")
    (done / "checkpoint" / "last.json").write_text("{}")
    (done / ".volnas.lock").write_text("123")
    search = src / "runs" / "medpipe" / "seed0"
    (search / "final").mkdir(parents=True)
    (search / "result.json").write_text("{}")
    (search / "final" / "metrics.json").write_text("{}")
    (search / "final" / "model.safetensors").write_bytes(b"w")
    unfinished = src / "runs" / "mc3_18" / "seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("epochs: 4\n")
    dst = tmp_path / "published"
    copied = mod.publish(src, dst)
    assert sorted(p.relative_to(dst).as_posix() for p in copied) == [
        "runs/medpipe/seed0", "runs/resnet3d_18/seed0"]
    files = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
    assert files == ["runs/medpipe/seed0/final/metrics.json", "runs/medpipe/seed0/result.json",
                     "runs/resnet3d_18/seed0/history.csv", "runs/resnet3d_18/seed0/metrics.json"]
